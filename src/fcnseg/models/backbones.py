"""FCN heads over modern timm encoders (filled in by the pretrained-encoder work)."""
