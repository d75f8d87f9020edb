"""`python -m backend serve` / `python3 build.py serve`: run the server until Ctrl+C."""
from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from shared.keys import generate_keys
from shared.protocol import DEFAULT_HOST, DEFAULT_PORT

from ..errors import UserError
from .defaults import MAX_QUEUED, WORKER_NICE
from .security import ServerKeys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend serve",
                                     description="Run the Distill3D backend server for the Blender add-on.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default %(default)s; anything else needs the key options)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="command port (default %(default)s); events are published on the next port")
    parser.add_argument("--data-dir", type=Path, default=Path("results/server"),
                        help="where jobs, checkpoints and results are kept (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument("--server-key", type=Path, help="the server's secret key file (server.key_secret)")
    parser.add_argument("--authorized-keys", type=Path, help="folder of the public keys of clients allowed in")
    parser.add_argument("--generate-keys", type=Path, metavar="DIR",
                        help="write a server and a client key pair into DIR, then exit")
    parser.add_argument("--coarse-mesh-every", type=int, default=100,
                        help="steps between live coarse meshes when a request does not say (default %(default)s)")
    parser.add_argument("--preview-interval", type=float, default=0.5,
                        help="least seconds between published previews of a job (default %(default)s)")
    parser.add_argument("--max-priors", type=int, default=2,
                        help="loaded priors each device's worker keeps between jobs (default %(default)s)")
    parser.add_argument("--models", type=Path, action="append", default=[], metavar="DIR",
                        help="a folder of diffusers model folders clients may name as the prior (by folder name or "
                             "full path); repeatable. The Hugging Face cache is always allowed, and Hub ids")
    parser.add_argument("--max-queued", type=int, default=MAX_QUEUED,
                        help="jobs that may wait at once; more are refused until some start (default %(default)s)")
    parser.add_argument("--worker-nice", type=int, default=WORKER_NICE, metavar="N",
                        help="run the job processes N steps nicer (Unix), so on a busy CPU the server's command "
                             "loop gets the CPU first (default %(default)s)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run the jobs on a Ray cluster: its address (e.g. 10.0.0.1:6379, or auto), or local to "
                             "start Ray on this machine. Each device's jobs go to one Ray worker holding a GPU; on "
                             "several machines the data folder must be on a shared filesystem (docs/server.md)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def serve_from_args(argv: list[str]) -> int:
    """Parse the serve options and run the server until interrupted. Returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if args.generate_keys:
        paths = generate_keys(args.generate_keys)
        print(f"Keys written to {args.generate_keys}.\n"
              f"  Server: --server-key {paths['server_secret']} --authorized-keys {paths['authorized']}\n"
              f"  Client: server_public_key={paths['server_public']} client_keys={paths['client_secret']}\n"
              f"Keep the .key_secret files private; give clients server.key only.")
        return 0
    from .server import Server  # here, so --help and --generate-keys stay fast

    try:
        keys = ServerKeys.load(args.server_key, args.authorized_keys) if args.server_key else None
        if args.authorized_keys and not args.server_key:
            raise UserError("--authorized-keys needs --server-key as well: pass the server's .key_secret file")
        if not 0 < args.port < 65535:
            raise UserError(f"--port {args.port} is not a port number: use 1024 to 65534")
        missing = [str(folder) for folder in args.models if not folder.is_dir()]
        if missing:
            raise UserError(f"--models {missing[0]} is not a folder: give a folder that holds model folders")
        executor_factory = ray_executors(args.ray, args.max_priors) if args.ray else None
        server = Server(args.data_dir, args.host, args.port, args.device, keys=keys, max_priors=args.max_priors,
                        coarse_mesh_every=max(0, args.coarse_mesh_every), preview_interval_s=args.preview_interval,
                        model_roots=args.models, max_queued=max(1, args.max_queued),
                        worker_nice=max(0, args.worker_nice), executor_factory=executor_factory)
        server.start()
    except UserError as error:
        print(f"error: {error}")
        return 2
    def stop(signum, frame):  # finish the step, checkpoint, then exit; a second Ctrl+C exits at once
        server.stop()
        for name in (signal.SIGINT, signal.SIGTERM):
            signal.signal(name, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    print(f"Distill3D backend listening on {server.address} (events on port {server.port + 1}); Ctrl+C stops it.",
          flush=True)
    server.serve_forever()
    if args.ray:
        from ..runner.ray_connection import disconnect
        disconnect()
    return 0


def ray_executors(address: str, max_priors: int):
    """Join (or start) Ray; returns the Server's executor_factory: one Ray actor per device."""
    from ..runner.job_runner import RunnerOptions
    from ..runner.ray_connection import connect
    from ..runner.ray_executor import RayExecutor

    connect(address)
    options = RunnerOptions(max_priors=max_priors, log_level=logging.getLogger().getEffectiveLevel())
    return lambda device: RayExecutor(device, options)
