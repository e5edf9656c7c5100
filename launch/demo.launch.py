"""The demo graph: conversation_player -> agent -> head_bridge, recorded by bag_recorder (config/demo.yaml).

    ros2 launch timar_ros demo.launch.py [config:=config/demo.yaml] [namespace:=demo] [checkpoint:=...]
        [device:=cpu] [bag_path:=outputs/demo/bag]

Same nodes and YAML as `timar_run --config config/demo.yaml` (timar_ros/runner.py). Stops when the player and
the recorder are done.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("timar_ros")
    defaults = PathJoinSubstitution([share, "config", "agent.yaml"])
    config = LaunchConfiguration("config")
    common = {"namespace": LaunchConfiguration("namespace"), "output": "screen", "emulate_tty": True}
    recorder = Node(package="timar_ros", executable="bag_recorder", name="bag_recorder", **common,
                    parameters=[defaults, config, {"bag_recorder.output": LaunchConfiguration("bag_path")}])
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "demo.yaml"])),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("checkpoint", default_value="models/timar-small-synth"),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("bag_path", default_value="outputs/demo/bag"),
        recorder,
        Node(package="timar_ros", executable="agent", name="agent", **common,
             parameters=[defaults, config, {"agent.checkpoint": LaunchConfiguration("checkpoint"),
                                            "agent.device": LaunchConfiguration("device")}]),
        Node(package="timar_ros", executable="head_bridge", name="head_bridge", **common,
             parameters=[defaults, config]),
        Node(package="timar_ros", executable="conversation_player", name="conversation_player", **common,
             parameters=[defaults, config]),
        RegisterEventHandler(OnProcessExit(target_action=recorder, on_exit=[EmitEvent(event=Shutdown())])),
    ])
