"""The demo: conversation_player -> agent -> head_bridge -> sim_head, recorded by bag_recorder.

    ros2 launch timar_ros demo.launch.py [config:=my.yaml] [namespace:=demo] [checkpoint:=models/x]
        [device:=cpu] [bag_path:=outputs/demo/bag] [params:='conversation_player.max_turns:=10']

Parameters: code defaults < config/agent.yaml < config/demo.yaml < config:= files < arguments given <
params:= overrides; the run ends when conversation_player and bag_recorder have exited. Same graph as
`timar_run demo ...` (timar_ros/graph.py).
"""

from timar_ros.launch_support import launch_description


def generate_launch_description():
    return launch_description("demo")
