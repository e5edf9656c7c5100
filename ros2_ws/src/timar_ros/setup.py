"""ament_python package of the timar ROS 2 nodes.

The top-level `launch/` and `config/` folders of the repository are the single source of truth; they are
symlinked into this package and installed into share/timar_ros so that
`ros2 launch timar_ros agent.launch.py` finds them after a colcon build.
"""

from glob import glob

from setuptools import find_packages, setup

package_name = "timar_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="timar maintainers",
    maintainer_email="maintainers@timar-project.org",
    description="ROS 2 nodes of the timar conversational head-motion agent",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "agent = timar_ros.agent:main",
            "audio_capture = timar_ros.audio_capture:main",
            "head_bridge = timar_ros.head_bridge:main",
            "conversation_player = timar_ros.conversation_player:main",
            "bag_recorder = timar_ros.bag_recorder:main",
            "sim_head = timar_ros.sim_head:main",
            "head_marker = timar_ros.head_marker:main",
            "responder = timar_ros.responder:main",
            "timar_run = timar_ros.runner:main",
            "speech_synth = timar_ros.speech_synth:main",
        ],
    },
)
