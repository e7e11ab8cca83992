"""ONNX export (`onnx`), running an export with onnxruntime (`runtime`) and checking it (`verify`)."""
