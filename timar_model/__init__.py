"""TIMAR: turn-level interleaved masked autoregression for conversational head motion.

Pure PyTorch + numpy. This package never imports ROS.
"""

__version__ = "0.1.0"
