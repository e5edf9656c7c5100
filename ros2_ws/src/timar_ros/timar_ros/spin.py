"""One `main()` for every timar node: init, build, spin until done or Ctrl-C, clean up, shut down."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node


def run_node(
    make_node: Callable[[], Node],
    args: list[str] | None = None,
    until: Callable[[Node], bool] | None = None,
    on_exit: Callable[[Node], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    on_start: Callable[[Node], None] | None = None,
) -> None:
    """Spin `make_node()` on a single-threaded executor (callbacks stay in arrival order) until rclpy shuts
    down, Ctrl-C, or `until(node)` is true; then `on_exit(node)`, destroy the node and shut rclpy down.
    An exception of a `fatal` type (e.g. no input device) is printed and exits with status 1.
    `on_start(node)` runs once the node exists, before spinning (e.g. a lifecycle node's autostart)."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        if on_start is not None:
            on_start(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if until is None:
            executor.spin()
        else:
            while rclpy.ok() and not until(node):
                executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except fatal as e:
        print(f"{getattr(node, 'get_name', lambda: 'timar node')()}: {e}")
        raise SystemExit(1) from e
    finally:
        if node is not None:
            if on_exit is not None:
                on_exit(node)
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def run_lifecycle_node(make_node: Callable[[], Node], args: list[str] | None = None, **kwargs) -> None:
    """run_node for a lifecycle node with an `autostart` parameter: when true, configure and activate through
    the state machine before spinning (as a lifecycle manager would); on exit, shut it down through the state
    machine from whatever state it is in (releasing its model or device)."""

    def autostart(node) -> None:
        if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()

    def shutdown(node) -> None:
        # rclpy has no public getter of the current state; the state machine's (id, label) is what its services use
        if node._state_machine.current_state[1] in ("unconfigured", "inactive", "active"):
            node.trigger_shutdown()

    run_node(make_node, args, on_start=autostart, on_exit=shutdown, **kwargs)
