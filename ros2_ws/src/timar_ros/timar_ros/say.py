"""`timar say "text"`: make the robot say something (one agent/say message), or stop it (`--stop`: one
agent/stop_speaking). It waits for a subscriber (the active speech_synth node), publishes once, and exits
when the subscriber has acknowledged the message (reliable QoS), or with one clear error when there is none.

`--voice V` first sets speech_synth's `voice` parameter (a live parameter: this and later utterances use it).
An empty text cancels, as on the topic.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", default=None, help="what to say (an empty string cancels)")
    parser.add_argument("--stop", action="store_true", help="stop speaking instead (agent/stop_speaking)")
    parser.add_argument("--voice", default=None, help="set speech_synth's voice first (e.g. en-us, en-us+f3)")
    parser.add_argument("--namespace", default="", help="namespace of the robot's nodes and topics")
    parser.add_argument("--node", default="speech_synth", help="name of the speech_synth node (for --voice)")
    parser.add_argument("--timeout", type=float, default=10.0, help="s to wait for the subscriber")


def run(args: argparse.Namespace) -> int:
    if args.stop == (args.text is not None):
        print("timar say: give a text to say, or --stop (not both)", file=sys.stderr)
        return 2
    try:
        import rclpy
        from rclpy.duration import Duration
        from std_msgs.msg import Empty, String

        from timar_ros import qos
    except ImportError as e:
        print(f"timar say needs ROS 2 and the built workspace ({e}): run `source env.sh` first", file=sys.stderr)
        return 1
    rclpy.init()
    node = rclpy.create_node("timar_say", namespace=args.namespace or None)
    try:
        if args.voice is not None:
            reason = _set_voice(node, args.node, args.voice, args.timeout)
            if reason:
                print(f"timar say: {reason}", file=sys.stderr)
                return 1
        topic, msg = ("agent/stop_speaking", Empty()) if args.stop else ("agent/say", String(data=args.text))
        pub = node.create_publisher(type(msg), topic, qos.profile(topic))
        name = pub.topic_name
        end = time.monotonic() + args.timeout
        while pub.get_subscription_count() < 1:
            if time.monotonic() > end:
                print(f"timar say: no subscriber on {name} after {args.timeout:g} s: is speech_synth running and "
                      "active (timar_run ... or ros2 run timar_ros speech_synth), in this namespace and "
                      "ROS_DOMAIN_ID?", file=sys.stderr)
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
        pub.publish(msg)
        if not pub.wait_for_all_acked(Duration(seconds=max(0.1, end - time.monotonic()))):
            print(f"timar say: the subscriber of {name} did not acknowledge the message within "
                  f"{args.timeout:g} s", file=sys.stderr)
            return 1
        print(f"{name}: {'stop' if args.stop else repr(args.text)}")
        return 0
    finally:
        node.destroy_node()
        rclpy.shutdown()


def _set_voice(node, target: str, voice: str, timeout: float) -> str | None:
    """Set `voice` on the speech_synth node through its parameter services; None, or why it failed."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(node, target)
    if not client.wait_for_services(timeout_sec=timeout):
        return f"no parameter services of node {target!r} after {timeout:g} s (is speech_synth running?)"
    future = client.set_parameters([Parameter("voice", value=voice)])
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    if not future.done():
        return f"setting the voice of {target!r} timed out"
    result = future.result().results[0]
    return None if result.successful else f"voice {voice!r} refused: {result.reason}"
