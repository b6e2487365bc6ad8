"""fcnseg: Fully Convolutional Networks for Semantic Segmentation.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(arXiv:1411.4038) and PAMI 2016. The paper's networks, exactly, and the whole workflow around them.
"""

__version__ = "0.3.0"
