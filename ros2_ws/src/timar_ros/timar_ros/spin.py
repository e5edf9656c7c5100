"""One `main()` for every timar node: init, build, spin until done or Ctrl-C, clean up, shut down."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def run_node(
    make_node: Callable[[], Node],
    args: list[str] | None = None,
    until: Callable[[Node], bool] | None = None,
    on_exit: Callable[[Node], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
) -> None:
    """Spin `make_node()` on a single-threaded executor (callbacks stay in arrival order) until rclpy shuts
    down, Ctrl-C, or `until(node)` is true; then `on_exit(node)`, destroy the node and shut rclpy down.
    An exception of a `fatal` type (e.g. no input device) is printed and exits with status 1."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
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
