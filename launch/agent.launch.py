"""The timar agent on a robot: agent + head_bridge, audio_capture (use_mic:=true) and bag_recorder (record:=true).

    ros2 launch timar_ros agent.launch.py [config:=robot.yaml] [namespace:=robot1] [checkpoint:=models/x]
        [device:=auto|cpu|cuda] [use_mic:=true|false] [record:=false|true] [bag_path:=outputs/bags/session]
        [params:='agent.temperature:=0.5;head_bridge.fps:=50.0']

The graph, its arguments and the layering of parameters (code defaults < config/agent.yaml < config:= files
< arguments given < params:= overrides) are timar_ros/graph.py's, the same as `timar_run agent ...`.
"""

from timar_ros.launch_support import launch_description


def generate_launch_description():
    return launch_description("agent")
