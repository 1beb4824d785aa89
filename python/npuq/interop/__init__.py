"""Exchange with other toolchains: int8 TFLite flatbuffers in and out, ONNX (QDQ) out.

Nothing here imports TensorFlow: TFLite files are read and written with the ``tflite`` schema package (the
generated flatbuffer accessors) and ``flatbuffers``; ONNX with ``onnx``. All of them are the ``interop``
extra, imported when a function needs them.
"""
