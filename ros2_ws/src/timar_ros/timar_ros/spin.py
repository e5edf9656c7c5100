"""One `main()` for every timar node: init, build, spin until done, SIGINT or SIGTERM, clean up, shut down.

SIGINT (Ctrl-C) and SIGTERM (systemd, `docker stop`, a process manager) are handled here, in Python, the
same way: the handler sets a flag and the executor spins in short slices, so the loop sees it within one slice
and the node is cleaned up (its `on_exit`: devices closed, bags finished) before rclpy shuts down. rclpy's
own handlers are not installed: with them, a SIGTERM to a node waiting in the executor was occasionally not
acted on at all. Installed explicitly, also when the process inherited SIGINT ignored (started in the
background by a non-interactive shell).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

SPIN_SLICE = 0.1  # s; the longest a stop signal waits to be acted on


STOP = threading.Event()  # set by SIGINT / SIGTERM


def _install_stop_handlers() -> None:
    # only a flag: an exception raised from a handler could land inside a lock held by rclpy or the node
    signal.signal(signal.SIGINT, lambda signum, frame: STOP.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())


def run_node(
    make_node: Callable[[], Node],
    args: list[str] | None = None,
    until: Callable[[Node], bool] | None = None,
    on_exit: Callable[[Node], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    on_start: Callable[[Node], None] | None = None,
) -> None:
    """Spin `make_node()` on a single-threaded executor (callbacks stay in arrival order) until rclpy shuts
    down, SIGINT / SIGTERM, or `until(node)` is true; then `on_exit(node)`, destroy the node and shut rclpy
    down.
    An exception of a `fatal` type (e.g. no input device) is printed and exits with status 1.
    `on_start(node)` runs once the node exists, before spinning (e.g. a lifecycle node's autostart)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    _install_stop_handlers()
    node = None
    try:
        node = make_node()
        if on_start is not None:
            on_start(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not STOP.is_set() and (until is None or not until(node)):
            executor.spin_once(timeout_sec=SPIN_SLICE)
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
