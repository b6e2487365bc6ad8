"""The weight-carrying subset of Caffe's ``caffe.proto``, declared for google.protobuf without protoc.

The messages are declared from the tables below with ``descriptor_pb2``, with BVLC Caffe's names, field
numbers, types and options (``src/caffe/proto/caffe.proto``); google.protobuf builds the classes that parse
a caffemodel (:func:`caffe_messages`). Fields left out (layer parameters, ``bottom``/``top``, gradients ...)
are unknown fields to the parser, skipped. In ``.proto`` form::

    syntax = "proto2";
    package caffe;
    message BlobShape { repeated int64 dim = 1 [packed = true]; }
    message BlobProto {
      optional int32 num = 1; optional int32 channels = 2; optional int32 height = 3; optional int32 width = 4;
      repeated float data = 5 [packed = true];
      optional BlobShape shape = 7;
      repeated double double_data = 8 [packed = true];
    }
    message LayerParameter { optional string name = 1; optional string type = 2; repeated BlobProto blobs = 7; }
    message V0LayerParameter { optional string name = 1; optional string type = 2; repeated BlobProto blobs = 50; }
    message V1LayerParameter {
      enum LayerType { NONE = 0; ACCURACY = 1; ...; DECONVOLUTION = 39; }   // _V1_LAYER_TYPES
      optional V0LayerParameter layer = 1; optional string name = 4; optional LayerType type = 5;
      repeated BlobProto blobs = 6;
    }
    message NetParameter {
      optional string name = 1;
      repeated V1LayerParameter layers = 2;  // deprecated (Caffe before 2015)
      repeated LayerParameter layer = 100;
    }

The tests write their caffemodels with classes built from this same declaration (a copy with extra fields).
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["CAFFE_PROTO", "V1_TYPE_NAMES", "caffe_messages"]

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE,
            "string": _F.TYPE_STRING}

# message -> its fields: (name, number, label, type); a type not in _SCALARS is a message or enum of the file.
_MESSAGES: dict[str, list[tuple[str, int, str, str]]] = {
    "BlobShape": [("dim", 1, "repeated", "int64")],
    "BlobProto": [("num", 1, "optional", "int32"), ("channels", 2, "optional", "int32"),
                  ("height", 3, "optional", "int32"), ("width", 4, "optional", "int32"),
                  ("data", 5, "repeated", "float"), ("shape", 7, "optional", "BlobShape"),
                  ("double_data", 8, "repeated", "double")],
    "LayerParameter": [("name", 1, "optional", "string"), ("type", 2, "optional", "string"),
                       ("blobs", 7, "repeated", "BlobProto")],
    "V0LayerParameter": [("name", 1, "optional", "string"), ("type", 2, "optional", "string"),
                         ("blobs", 50, "repeated", "BlobProto")],
    "V1LayerParameter": [("layer", 1, "optional", "V0LayerParameter"), ("name", 4, "optional", "string"),
                         ("type", 5, "optional", "V1LayerParameter.LayerType"),
                         ("blobs", 6, "repeated", "BlobProto")],
    "NetParameter": [("name", 1, "optional", "string"), ("layers", 2, "repeated", "V1LayerParameter"),
                     ("layer", 100, "repeated", "LayerParameter")],
}

# V1LayerParameter.LayerType: (enum name, number, the layer's type string since 2015, as Caffe's
# UpgradeV1LayerType names it).
_V1_LAYER_TYPES = (
    ("NONE", 0, ""), ("ABSVAL", 35, "AbsVal"), ("ACCURACY", 1, "Accuracy"), ("ARGMAX", 30, "ArgMax"),
    ("BNLL", 2, "BNLL"), ("CONCAT", 3, "Concat"), ("CONTRASTIVE_LOSS", 37, "ContrastiveLoss"),
    ("CONVOLUTION", 4, "Convolution"), ("DATA", 5, "Data"), ("DECONVOLUTION", 39, "Deconvolution"),
    ("DROPOUT", 6, "Dropout"), ("DUMMY_DATA", 32, "DummyData"), ("EUCLIDEAN_LOSS", 7, "EuclideanLoss"),
    ("ELTWISE", 25, "Eltwise"), ("EXP", 38, "Exp"), ("FLATTEN", 8, "Flatten"), ("HDF5_DATA", 9, "HDF5Data"),
    ("HDF5_OUTPUT", 10, "HDF5Output"), ("HINGE_LOSS", 28, "HingeLoss"), ("IM2COL", 11, "Im2col"),
    ("IMAGE_DATA", 12, "ImageData"), ("INFOGAIN_LOSS", 13, "InfogainLoss"),
    ("INNER_PRODUCT", 14, "InnerProduct"), ("LRN", 15, "LRN"), ("MEMORY_DATA", 29, "MemoryData"),
    ("MULTINOMIAL_LOGISTIC_LOSS", 16, "MultinomialLogisticLoss"), ("MVN", 34, "MVN"),
    ("POOLING", 17, "Pooling"), ("POWER", 26, "Power"), ("RELU", 18, "ReLU"), ("SIGMOID", 19, "Sigmoid"),
    ("SIGMOID_CROSS_ENTROPY_LOSS", 27, "SigmoidCrossEntropyLoss"), ("SILENCE", 36, "Silence"),
    ("SOFTMAX", 20, "Softmax"), ("SOFTMAX_LOSS", 21, "SoftmaxWithLoss"), ("SPLIT", 22, "Split"),
    ("SLICE", 33, "Slice"), ("TANH", 23, "TanH"), ("WINDOW_DATA", 24, "WindowData"),
    ("THRESHOLD", 31, "Threshold"),
)
V1_TYPE_NAMES: dict[int, str] = {number: name for _, number, name in _V1_LAYER_TYPES}
"""V1 ``LayerType`` number -> the type string of today's ``LayerParameter`` (``14`` -> ``"InnerProduct"``)."""


def _declare() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="fcnseg/caffe_subset.proto", package="caffe", syntax="proto2")
    for message, fields in _MESSAGES.items():
        m = fdp.message_type.add(name=message)
        for name, number, label, kind in fields:
            f = m.field.add(name=name, number=number,
                            label=_F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL)
            if kind in _SCALARS:
                f.type = _SCALARS[kind]
                if label == "repeated" and kind != "string":
                    f.options.packed = True  # as caffe.proto declares them; parsing accepts unpacked too
            else:
                f.type = _F.TYPE_ENUM if kind.endswith("LayerType") else _F.TYPE_MESSAGE
                f.type_name = f".caffe.{kind}"
        if message == "V1LayerParameter":
            enum = m.enum_type.add(name="LayerType")
            for name, number, _ in _V1_LAYER_TYPES:
                enum.value.add(name=name, number=number)
    return fdp


CAFFE_PROTO: descriptor_pb2.FileDescriptorProto = _declare()
"""The subset as a file descriptor (``caffe.NetParameter`` and the messages it holds)."""


def caffe_messages(proto: descriptor_pb2.FileDescriptorProto | None = None) -> dict[str, type[Message]]:
    """Message classes by short name (``"NetParameter"``, ``"BlobProto"`` ...) of ``proto`` (default:
    :data:`CAFFE_PROTO`), built in a descriptor pool of their own, so a ``caffe_pb2`` a user imported
    elsewhere (the default pool) never clashes with them."""
    if proto is None:
        return _default_messages()
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([proto.name], pool)
    return {full.removeprefix(f"{proto.package}."): cls for full, cls in classes.items()}


@functools.cache
def _default_messages() -> dict[str, type[Message]]:
    return caffe_messages(CAFFE_PROTO)
