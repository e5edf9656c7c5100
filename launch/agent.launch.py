"""The timar agent with its head bridge, and optionally the microphone and an MCAP recorder.

    ros2 launch timar_ros agent.launch.py [config:=my.yaml] [namespace:=robot1] [checkpoint:=models/x]
        [device:=auto|cpu|cuda] [use_mic:=true|false] [record:=false|true] [bag_path:=outputs/bags/session]

Parameters come from config/agent.yaml (`/**:` wildcard) and then the `config` file; the launch arguments
override single parameters. Without launch_ros use `timar_run` (timar_ros/runner.py), which starts the same
executables from the same YAML.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    defaults = PathJoinSubstitution([FindPackageShare("timar_ros"), "config", "agent.yaml"])
    config = LaunchConfiguration("config")
    namespace = LaunchConfiguration("namespace")
    common = {"namespace": namespace, "output": "screen", "emulate_tty": True}
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=defaults, description="params YAML over agent.yaml"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node and topic"),
        DeclareLaunchArgument("checkpoint", default_value="models/timar-small-synth",
                              description="model directory (config.json + model.safetensors)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("use_mic", default_value="true", description="start audio_capture"),
        DeclareLaunchArgument("record", default_value="false", description="record an MCAP bag"),
        DeclareLaunchArgument("bag_path", default_value="outputs/bags/agent", description="bag folder (new)"),
        Node(package="timar_ros", executable="agent", name="agent", **common,
             parameters=[defaults, config, {"agent.checkpoint": LaunchConfiguration("checkpoint"),
                                            "agent.device": LaunchConfiguration("device")}]),
        Node(package="timar_ros", executable="head_bridge", name="head_bridge", **common,
             parameters=[defaults, config]),
        Node(package="timar_ros", executable="audio_capture", name="audio_capture", **common,
             parameters=[defaults, config], condition=IfCondition(LaunchConfiguration("use_mic"))),
        Node(package="timar_ros", executable="bag_recorder", name="bag_recorder", **common,
             parameters=[defaults, config, {"bag_recorder.output": LaunchConfiguration("bag_path"),
                                            "bag_recorder.stop_on_done": False}],
             condition=IfCondition(LaunchConfiguration("record"))),
    ])
