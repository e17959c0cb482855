"""The ``emberscope`` command line: the only place errors become advice."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import __version__
from agent.config import parse_duration
from agent.ebpf import DEFAULT_OBJECT_PATH, PidEvent, Session
from agent.errors import BpfError, ConfigError, EmberscopeError, OutputError, ProcessError
from agent.flamegraph import FORMATS, format_of, render, select_profiles
from agent.memory import limit_arenas
from agent.pprof import ProfileBuilder, format_table, merge_profiles, profile_pb2, top_functions
from agent.profiler import ProcessProfile, ProcessSelection, Profiler
from agent.sampling import CoreOptions, SamplingCore
from agent.symbols import DEMANGLE_MODES
from agent.telemetry.logs import LOG_FORMATS, LOG_LEVELS, LogFormatter, LoggingArguments

__all__ = ["main"]

log = logging.getLogger("agent")

BTF_PATH = "/sys/kernel/btf/vmlinux"
DEFAULT_LISTEN_ADDR = "127.0.0.1:12345"  # as Alloy
RECENT_INTERVALS = 4  # of each target, kept for the /profiles/ page
RECENT_MAX_MIB = 32  # of pprof and labels kept for it, over all targets
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39
_COLLECT_EVERY_S = 5.0
_PR_SET_CHILD_SUBREAPER = 36
# `profile` shows C++ and Rust names without parameter lists; the agent keeps
# Alloy's default, "none".
_PROFILE_DEMANGLE = "templates"


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        # Configuration errors already start with file:line:col.
        print(f"emberscope: {exc}", file=sys.stderr)
        return 1
    except EmberscopeError as exc:
        print(f"emberscope: error: {_advice(exc)}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    # The global options are accepted before the command and after it.
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="one log level more per -v, unless --log.level is given",
    )
    common.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="debug, info, warn or error (default: the logging block's, else info for run, "
        "warn for the other commands)",
    )
    common.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help="logfmt or json (default: the logging block's, else logfmt)",
    )
    parser = _Parser(
        prog="emberscope", description="A continuous eBPF CPU profiler.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"emberscope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_command = functools.partial(commands.add_parser, parents=[common])

    version = add_command("version", help="print the version")
    version.set_defaults(handler=lambda _args: print(f"emberscope {__version__}") or 0)

    profile = add_command(
        "profile",
        help="profile processes once and write a pprof file",
        usage="emberscope profile [options] (--pid PID ... | --all | -- COMMAND [ARG...])",
    )
    profile.add_argument(
        "--pid", type=_pid, action="append", default=[], help="a process to profile (repeatable)"
    )
    profile.add_argument("--all", action="store_true", help="profile every process of this host")
    profile.add_argument(
        "--duration",
        type=_duration,
        default=10.0,
        help="how long, e.g. 500ms, 10s, 2m (default 10s)",
    )
    profile.add_argument(
        "--sample-rate",
        type=_sample_rate,
        default=97,
        help="samples per second per CPU (default 97)",
    )
    profile.add_argument(
        "--output",
        type=Path,
        default=Path("profile.pb.gz"),
        help="the file to write: a flame graph if it ends in .html or .svg, else gzipped pprof",
    )
    profile.add_argument("--no-user", action="store_true", help="leave out user-space frames")
    profile.add_argument("--no-kernel", action="store_true", help="leave out kernel frames")
    profile.add_argument(
        "--no-python", action="store_true", help="do not walk Python frames: native stacks only"
    )
    profile.add_argument(
        "--no-unwind-tables",
        action="store_true",
        help="walk user stacks by frame pointers only, not with the files' .eh_frame tables",
    )
    profile.add_argument(
        "--demangle",
        choices=DEMANGLE_MODES,
        default=_PROFILE_DEMANGLE,
        help="how C++ and Rust names are shown: none (as linked), simplified (no "
        "parameters, no template arguments), templates, full "
        f"(default {_PROFILE_DEMANGLE})",
    )
    profile.add_argument(
        "--top", type=_count, default=10, help="rows of the printed table (default 10)"
    )
    profile.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    profile.set_defaults(handler=_profile, usage=profile)

    run = add_command("run", help="run the agent on an Alloy-syntax configuration")
    run.add_argument("config", type=Path, help="the configuration file")
    run.add_argument(
        "--server.http.listen-addr",
        dest="listen_addr",
        type=_listen_addr,
        default=DEFAULT_LISTEN_ADDR,
        metavar="HOST:PORT",
        help=f"where /metrics, health and components are served (default {DEFAULT_LISTEN_ADDR})",
    )
    run.add_argument(
        "--server.http.recent-profiles",
        dest="recent_intervals",
        type=_positive,
        default=RECENT_INTERVALS,
        metavar="N",
        help=f"intervals of each target kept for the /profiles/ page (default {RECENT_INTERVALS})",
    )
    run.add_argument(
        "--server.http.recent-profiles-max-mib",
        dest="recent_max_mib",
        type=_positive,
        default=RECENT_MAX_MIB,
        metavar="MIB",
        help=f"memory for them, over all targets; the oldest go first (default {RECENT_MAX_MIB})",
    )
    run.add_argument(
        "--stop.timeout",
        dest="stop_timeout",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="at SIGTERM, how long pyroscope.write may spend delivering before what is left "
        "goes to its spool (default 20s; the whole stop takes at most 5s more)",
    )
    run.set_defaults(handler=_run, default_log_level=logging.INFO)

    _add_flamegraph_parser(add_command)

    check_config = add_command("check-config", help="check a configuration file and exit")
    check_config.add_argument("config", type=Path, help="the configuration file")
    check_config.set_defaults(handler=_check_config)
    return parser


def _listen_addr(text: str) -> tuple[str, int]:
    from agent.telemetry import parse_listen_addr

    try:
        return parse_listen_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"invalid pid {text!r}: a positive number is expected")
    return int(text)


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be longer than 0")
    return seconds


def _sample_rate(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"invalid sample rate {text!r}: use 1 to 1000 Hz")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: 1 or more is expected")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a number is expected")
    return int(text)


def _configure_logging(args: argparse.Namespace, block: LoggingArguments | None = None) -> None:
    """--log.level and --log.format win over the configuration's ``logging`` block,
    which wins over the command's defaults; each -v is one level more verbose than
    that, unless --log.level is given. Other libraries log their warnings and errors
    alone, in the same format."""
    level_name = getattr(args, "log_level", None) or (block.level if block else None)
    level = (
        LOG_LEVELS[level_name]
        if level_name
        else getattr(args, "default_log_level", logging.WARNING)
    )
    if not hasattr(args, "log_level"):
        level = max(level - 10 * getattr(args, "verbose", 0), logging.DEBUG)
    log_format = getattr(args, "log_format", None) or (block.format if block else "logfmt")
    root = logging.getLogger()
    # Called again at a reload: the handler is kept (threads log through it) and
    # given the new format.
    ours = [h for h in root.handlers if isinstance(h.formatter, LogFormatter)]
    handler = ours[0] if ours else logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(log_format))
    if not ours:
        root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    log.setLevel(level)
    logging.captureWarnings(True)


# --- emberscope run and check-config -----------------------------------------


def _run(args: argparse.Namespace) -> int:
    # the config and discovery rooms: not needed by `profile`
    from agent.pipeline import DEFAULT_STOP_TIMEOUT, Agent

    limit_arenas()  # before any thread starts
    limits = (args.recent_intervals, args.recent_max_mib << 20)
    stop_timeout = args.stop_timeout or DEFAULT_STOP_TIMEOUT
    agent = Agent.load(args.config, os.environ, args.listen_addr, limits, stop_timeout)
    _configure_logging(args, agent.graph.settings["logging"])
    agent.on_settings = lambda settings: _configure_logging(args, settings["logging"])
    log.info("configuration %s, working directory %s", args.config.resolve(), Path.cwd())
    _check_privileges()
    stop = _stop_on_signals()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: agent.request_reload())
    agent.run_until(stop)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from agent.pipeline import check

    check(args.config, os.environ)
    print(f"{args.config}: valid")
    return 0


# --- emberscope profile ------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    modes = sum((bool(args.pid), args.all, bool(command)))
    if modes != 1:
        args.usage.error("choose exactly one of --pid PID, --all or -- COMMAND")
    if args.no_user and args.no_kernel:
        args.usage.error("--no-user and --no-kernel together leave nothing to collect")
    _check_privileges()
    for pid in args.pid:
        if not os.path.exists(f"/proc/{pid}"):
            raise ProcessError(pid, "no such process")

    options = CoreOptions(
        sample_rate=args.sample_rate,
        collect_user=not args.no_user,
        collect_kernel=not args.no_kernel,
        discover_new=not args.pid,
        python_enabled=not args.no_python,
        demangle=args.demangle,
        unwind_tables=not args.no_unwind_tables,
    )
    selection = ProcessSelection(all_processes=args.all, pids=frozenset(args.pid))
    builder = ProfileBuilder(args.sample_rate, time_nanos=time.time_ns())
    destination = ProcessProfile(builder, not args.no_user, not args.no_kernel)
    stop = _stop_on_signals()

    def classify(process: PidEvent) -> list[ProcessProfile]:
        matches = selection.matches(process.pid, process.ppid, core.profiler.profiled)
        return [destination] if matches else []

    with SamplingCore(options, classify) as core:
        session, profiler = core.session, core.profiler
        for pid in args.pid:
            profiler.add(pid, [destination])
        child = _spawn(command, selection, profiler, destination) if command else None
        started = time.monotonic()
        ended = _sample_until(session, profiler, started + args.duration, child, stop)
        builder.duration_nanos = int((ended - started) * 1e9)
        if child is not None:
            child.terminate()
    profile = builder.build()
    subtitle = f"{builder.sample_count} samples at {args.sample_rate} Hz, {args.duration:g} s"
    _write(profile, args.output, format_of(args.output, "pprof"), subtitle)
    rows = top_functions(profile, args.top)
    # Cut to the terminal (or $COLUMNS); written to a pipe or a file, whole.
    print(format_table(rows, shutil.get_terminal_size((0, 0)).columns or None))
    print(f"wrote {args.output}: {builder.sample_count} samples, {len(builder)} stacks")
    return 0


def _check_privileges() -> None:
    """Fail early, with advice, where the kernel would refuse later."""
    capabilities = _effective_capabilities()
    can_bpf = capabilities >> _CAP_SYS_ADMIN & 1 or (
        capabilities >> _CAP_BPF & 1 and capabilities >> _CAP_PERFMON & 1
    )
    if not can_bpf:
        raise ConfigError(
            "emberscope needs root: run it with sudo (or grant CAP_BPF, CAP_PERFMON, "
            "CAP_SYS_PTRACE and CAP_SYS_RESOURCE)"
        )
    if not os.path.exists(BTF_PATH):
        raise ConfigError(
            f"this kernel has no BTF ({BTF_PATH} is missing): "
            "Emberscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )


def _effective_capabilities() -> int:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so that a run ends cleanly: the
    agent stops its components, a profile run still writes its profile."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    return stop


class _Child:
    """The profiled command: its pid, reaped together with orphans of its tree."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exited = False

    def reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.exited = True

    def terminate(self) -> None:
        if self.exited:
            return
        os.kill(self.pid, signal.SIGTERM)
        for _ in range(50):
            self.reap()
            if self.exited:
                return
            time.sleep(0.02)
        os.kill(self.pid, signal.SIGKILL)


def _spawn(
    command: list[str],
    selection: ProcessSelection,
    profiler: Profiler,
    destination: ProcessProfile,
) -> _Child:
    import ctypes

    # Orphans of the command's tree are reparented to us, so they still
    # count as its descendants (ProcessSelection.matches).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    selection.reaper = os.getpid()
    try:
        pid = os.posix_spawnp(command[0], command, os.environ)
    except OSError as exc:
        raise ConfigError(f"cannot start {command[0]!r}: {exc.strerror}") from exc
    selection.roots.add(pid)
    profiler.add(pid, [destination])
    return _Child(pid)


def _sample_until(
    session: Session,
    profiler: Profiler,
    deadline: float,
    child: _Child | None,
    stop: threading.Event,
) -> float:
    """Sample until the deadline, the child's exit or a signal; return when
    sampling ended (the last drain), before its samples are symbolized."""
    show_progress = sys.stderr.isatty()
    started = time.monotonic()
    next_collect = started + _COLLECT_EVERY_S
    while not stop.is_set() and time.monotonic() < deadline:
        profiler.poll(timeout_ms=int(min(0.2, max(deadline - time.monotonic(), 0)) * 1000))
        if child is not None:
            child.reap()
            if child.exited:
                break
        if time.monotonic() >= next_collect:
            profiler.collect()
            next_collect += _COLLECT_EVERY_S
        if show_progress:
            elapsed = time.monotonic() - started
            print(
                f"\r{elapsed:6.1f}s  {session.read_sample_total():8d} samples",
                end="",
                file=sys.stderr,
            )
    ended = time.monotonic()
    profiler.collect()
    if show_progress:
        print(file=sys.stderr)
    return ended


def _write(profile: profile_pb2.Profile, path: Path, fmt: str, subtitle: str) -> None:
    data = render(profile, fmt, f"emberscope: {path.name}", subtitle)
    try:
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc


# --- emberscope flamegraph --------------------------------------------------


def _add_flamegraph_parser(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    flamegraph = add_command(
        "flamegraph",
        help="merge pprof files into one flame graph (or one pprof)",
        usage="emberscope flamegraph PATH... [--since 10m] [--service NAME] "
        "[--format html|svg|pprof] -o FILE",
    )
    flamegraph.add_argument(
        "paths",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="pprof files, or directories pyroscope.file writes (searched recursively)",
    )
    flamegraph.add_argument(
        "--since", type=_duration, help="only profiles of the last 10m, 1h, ... (default all)"
    )
    flamegraph.add_argument(
        "--service",
        help="only profiles whose service_name label (from .labels.json) is NAME",
        metavar="NAME",
    )
    flamegraph.add_argument(
        "--format", choices=FORMATS, help="what to write (default: by -o's extension, else html)"
    )
    flamegraph.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    flamegraph.set_defaults(handler=_flamegraph)


def _flamegraph(args: argparse.Namespace) -> int:
    since = time.time_ns() - int(args.since * 1e9) if args.since else None
    selection = select_profiles(args.paths, since_nanos=since, service=args.service)
    for skipped in selection.skipped:
        print(f"emberscope: skipped {skipped}", file=sys.stderr)
    if not selection.profiles:
        paths = " ".join(map(str, args.paths))
        filters = [f"--{name}" for name in ("since", "service") if getattr(args, name)]
        matching = f" matches {' and '.join(filters)}" if filters else ""
        raise ConfigError(f"no profile in {paths}{matching}")
    merged = merge_profiles(found.profile for found in selection.profiles)
    services = sorted({n for f in selection.profiles if (n := f.labels.get("service_name"))})
    subtitle = (
        f"{len(selection.profiles)} profile(s){' of ' * bool(services)}{', '.join(services)}, "
        f"{merged.duration_nanos / 1e9:.0f} s from {time.ctime(merged.time_nanos / 1e9)}"
    )
    fmt = args.format or format_of(args.output, "html")
    _write(merged, args.output, fmt, subtitle)
    print(f"wrote {args.output}: {len(selection.profiles)} profiles merged")
    return 0


def _advice(exc: EmberscopeError) -> str:
    """Turn a known failure into a sentence that says what to do."""
    if isinstance(exc, BpfError):
        if exc.errno in (1, 13):  # EPERM, EACCES
            return (
                f"the kernel refused {exc.call} ({os.strerror(exc.errno)}): Emberscope needs "
                "root with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE, and "
                "kernel.perf_event_paranoid or lockdown may forbid it"
            )
        if exc.call == "bpf_object__open_file" and exc.errno == 2:
            return f"the BPF object is missing ({DEFAULT_OBJECT_PATH}): run 'make install'"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
