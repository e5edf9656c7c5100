"""A conversation with the robot: the user side of a clip -> agent -> head_bridge -> sim_head, the responder
(a stand-in dialogue partner) -> speech_synth (the robot's voice) -> agent, everything recorded by bag_recorder.

    ros2 launch timar_ros talk.launch.py [config:=my.yaml] [namespace:=talk] [checkpoint:=models/x]
        [device:=cpu] [bag_path:=outputs/talk/bag] [params:='speech_synth.sink:=speaker']

Parameters: code defaults < config/agent.yaml < config/talk.yaml < config:= files < arguments given <
params:= overrides; the run ends when conversation_player and bag_recorder have exited. Same graph as
`timar_run talk ...` (timar_ros/graph.py).
"""

from timar_ros.launch_support import launch_description


def generate_launch_description():
    return launch_description("talk")
