"""Deployment: ONNX export of a TIMAR model (`timar export`), an onnxruntime backend for the streaming
generator, int8 quantisation of the exported backbone, and the GPU check (`scripts/gpu_check.sh`).

Nothing here imports ROS; onnx / onnxruntime are imported only by the functions that need them."""
