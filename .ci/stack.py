"""The production stack on loopback, for the integration suite: an S3 server (moto) with the
buckets OceanML writes to, an OpenAI-protocol LLM stand-in, an MLflow tracking server
(PostgreSQL backend store, artifacts proxied to S3, MLflow's basic-auth app), a Prefect
server on PostgreSQL with an API auth string, and a process worker configured the way an
operator configures one (environment only). Nothing answers without its credentials but the
health probes.

    python .ci/stack.py start DIR      # PostgreSQL at $OCEANML_STACK_PG_URL must be running
                                       # (else $OCEANML_TEST_PG_URL); with OCEANML_PG_DATA,
                                       # its data folder, restart postgres restarts it
    python .ci/stack.py restart DIR prefect|mlflow|worker|postgres
    python .ci/stack.py stop DIR

``start`` writes ``DIR/stack.env`` (the worker's OceanML settings, with random sentinel
credentials in every URL and key: a test searches everything OceanML wrote for them) and
``DIR/stack.json`` (ports, databases, how to restart each part). Any part that does not come
up ends ``start`` non-zero with its name and the tail of its log, after stopping the others.
Run it with the project's virtual environment (`.venv/bin/python`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKETS = ("oceanml-landing", "oceanml-lake", "oceanml-dvc", "oceanml-mlflow")
POOL = "oceanml-process"
SERVERS = ("s3", "llm", "mlflow", "prefect")  # the stack's parts before its worker
START_TIMEOUT_S = 180


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, database: str, *, driver: str | None = None,
                  password: str | None = None) -> str:
    parts = urlsplit(url)
    scheme = f"postgresql+{driver}" if driver else parts.scheme
    netloc = parts.netloc
    if password:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':')[0]}:{password}@{host}"
    return urlunsplit(parts._replace(scheme=scheme, netloc=netloc, path=f"/{database}"))


def create_databases(admin_url: str, names: list[str]) -> None:
    import psycopg

    with psycopg.connect(admin_url.replace("+psycopg", ""), autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


def wait_for(name: str, check, log: Path, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    state = f"exited {proc.returncode}" if proc is not None and proc.poll() is not None \
        else f"not ready after {START_TIMEOUT_S} s"
    raise StackError(f"{name} did not start ({state}); the end of {log}:\n{tail}")


def http_ok(url: str, **kw) -> bool:
    import httpx

    return httpx.get(url, timeout=5, **kw).status_code == 200


def spawn(state: dict, name: str) -> subprocess.Popen:
    part = state["parts"][name]
    log = Path(state["dir"]) / f"{name}.log"
    with log.open("a") as out:
        proc = subprocess.Popen(part["cmd"], cwd=part.get("cwd", REPO), env=part["env"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    part["pid"] = proc.pid
    return proc


def ready(state: dict, name: str, proc: subprocess.Popen | None) -> None:
    log = Path(state["dir"]) / f"{name}.log"
    url = state["urls"].get(name)
    checks = {
        "s3": lambda: http_ok(url + "/moto-api/"),
        "llm": lambda: socket.create_connection(("127.0.0.1", state["ports"]["llm"]), 1).close()
        or True,
        "mlflow": lambda: http_ok(url + "/health"),
        "prefect": lambda: http_ok(url + "/health"),
        "worker": lambda: worker_online(state),
    }
    wait_for(name, checks[name], log, proc)


def worker_online(state: dict) -> bool:
    import httpx

    answer = httpx.post(f"{state['urls']['prefect']}/work_pools/{POOL}/workers/filter",
                        json={}, timeout=5, auth=prefect_login(state))
    return answer.status_code == 200 and any(w["status"] == "ONLINE" for w in answer.json())


def prefect_login(state: dict) -> tuple[str, str]:
    """The user and password of the Prefect server's auth string (``user:password``)."""
    user, password = state["oceanml_env"]["PREFECT_API_AUTH_STRING"].split(":", 1)
    return user, password


def mlflow_auth_config(directory: Path) -> Path:
    """MLflow's basic-auth app's settings: its users in a SQLite file of the stack's (the admin
    user, ``oceanml``, is created on the first start from ``MLFLOW_AUTH_ADMIN_PASSWORD``), no
    permission for a user not granted one, and a checked password remembered for a minute
    (PBKDF2 on every request otherwise)."""
    path = directory / "mlflow-auth.ini"
    path.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                    f"database_uri = sqlite:///{directory / 'mlflow-auth.db'}\n"
                    "admin_username = oceanml\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    "auth_cache_ttl_seconds = 60\n")
    return path


def base_env(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("OCEANML_", "PREFECT_",
                                                                     "MLFLOW_", "AWS_"))}
    return {**keep, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


def plan(directory: Path, admin_url: str, pg_data: str | None) -> dict:
    """Ports, URLs, sentinel credentials and the command of every part."""
    ports = {name: free_port() for name in ("s3", "llm", "mlflow", "prefect")}
    urls = {"s3": f"http://127.0.0.1:{ports['s3']}",
            "llm": f"http://127.0.0.1:{ports['llm']}/v1",
            "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
            "prefect": f"http://127.0.0.1:{ports['prefect']}/api"}
    sentinel = {name: f"sentinel-{name}-{secrets.token_hex(8)}"
                for name in ("db", "mlflow", "llm", "s3", "prefect")}
    aws = {"AWS_ACCESS_KEY_ID": "oceanml-ci", "AWS_SECRET_ACCESS_KEY": sentinel["s3"],
           "AWS_DEFAULT_REGION": "us-east-1"}
    mlflow_db = with_database(admin_url, "oceanml_stack_mlflow", driver="psycopg")
    prefect_db = with_database(admin_url, "oceanml_stack_prefect", driver="asyncpg")
    user_mlflow = urlsplit(urls["mlflow"])
    oceanml = {
        "OCEANML_HOME": str(directory / "home"),
        "OCEANML_PROJECT_DIR": str(directory / "project"),
        "OCEANML_REPO_DIR": str(REPO),
        "OCEANML_DB_URL": with_database(admin_url, "oceanml_stack", driver="psycopg",
                                        password=sentinel["db"]),
        "OCEANML_LANDING_URL": "s3://oceanml-landing/landing",
        "OCEANML_LAKE_URL": "s3://oceanml-lake/lake",
        "OCEANML_DVC_REMOTE_URL": "s3://oceanml-dvc/remote",
        "OCEANML_S3_ENDPOINT_URL": urls["s3"],
        "OCEANML_MLFLOW_TRACKING_URI": urlunsplit(user_mlflow._replace(
            netloc=f"oceanml:{sentinel['mlflow']}@{user_mlflow.netloc}")),
        "OCEANML_LLM_PROVIDER": "openai",
        "OCEANML_LLM_BASE_URL": urls["llm"],
        "OCEANML_LLM_MODEL": "gpt-4o-mini",
        "OCEANML_LLM_API_KEY": sentinel["llm"],
        "OCEANML_PROFILE": "cpu-small",
        "PREFECT_API_URL": urls["prefect"],
        "PREFECT_API_AUTH_STRING": f"oceanml:{sentinel['prefect']}",
        **aws,
    }
    env = base_env(directory / "prefect-home")
    parts = {
        "s3": {"cmd": [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])],
               "env": env},
        "llm": {"cmd": [str(BIN / "python"), "-m", "tests.openai_server", "--latency", "0.01",
                        "--port", str(ports["llm"]), "--api-key-env", "OCEANML_LLM_API_KEY"],
                "env": {**env, "OCEANML_LLM_API_KEY": sentinel["llm"]}},
        "mlflow": {"cmd": [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                           "--port", str(ports["mlflow"]), "--backend-store-uri", mlflow_db,
                           "--artifacts-destination", "s3://oceanml-mlflow/artifacts",
                           "--app-name", "basic-auth"],
                   "env": {**env, **aws, "MLFLOW_S3_ENDPOINT_URL": urls["s3"],
                           "MLFLOW_AUTH_CONFIG_PATH": str(mlflow_auth_config(directory)),
                           "MLFLOW_AUTH_ADMIN_PASSWORD": sentinel["mlflow"],
                           # signs the auth app's CSRF tokens; the same on every restart
                           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}},
        "prefect": {"cmd": [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                            "--port", str(ports["prefect"])],
                    "env": {**env, "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
                            "PREFECT_UI_API_URL": urls["prefect"],
                            "PREFECT_SERVER_API_AUTH_STRING": f"oceanml:{sentinel['prefect']}"}},
        "worker": {"cmd": [str(BIN / "prefect"), "worker", "start", "--pool", POOL,
                           "--type", "process", "--limit", "1"],
                   "env": {**base_env(directory / "worker-prefect-home"), **oceanml,
                           "PREFECT_WORKER_QUERY_SECONDS": "1",
                           "PREFECT_WORKER_PREFETCH_SECONDS": "1"}},
    }
    return {"dir": str(directory), "ports": ports, "urls": urls, "parts": parts,
            "oceanml_env": oceanml, "sentinels": sentinel, "admin_url": admin_url,
            "pg_data": pg_data,
            "databases": ["oceanml_stack", "oceanml_stack_mlflow", "oceanml_stack_prefect"]}


def save(state: dict) -> None:
    directory = Path(state["dir"])
    path = directory / "stack.json"
    path.write_text(json.dumps(state, indent=1))
    path.chmod(0o600)
    env = directory / "stack.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in state["oceanml_env"].items()))
    env.chmod(0o600)


def load(directory: Path) -> dict:
    return json.loads((directory / "stack.json").read_text())


def make_buckets(state: dict) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=state["urls"]["s3"], region_name="us-east-1",
                      aws_access_key_id="oceanml-ci",
                      aws_secret_access_key=state["sentinels"]["s3"])
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)


def start(directory: Path) -> None:
    admin_url = os.environ.get("OCEANML_STACK_PG_URL") or os.environ.get("OCEANML_TEST_PG_URL")
    if not admin_url:
        raise StackError("neither OCEANML_STACK_PG_URL nor OCEANML_TEST_PG_URL is set "
                         "(bash .ci/start-postgres.sh prints one)")
    directory.mkdir(parents=True, exist_ok=True)
    state = plan(directory, admin_url, os.environ.get("OCEANML_PG_DATA"))
    save(state)
    create_databases(admin_url, state["databases"])
    # the servers need none of each other to start (MLflow reaches S3 at its first artifact):
    # they start at once, each importing on a core of its own; the worker needs Prefect's API
    print(f"stack: starting {', '.join(SERVERS)}", file=sys.stderr, flush=True)
    procs = {name: spawn(state, name) for name in SERVERS}
    save(state)
    for name, proc in procs.items():
        ready(state, name, proc)
    make_buckets(state)
    print("stack: starting worker", file=sys.stderr, flush=True)
    proc = spawn(state, "worker")
    save(state)
    ready(state, "worker", proc)
    print(f"stack: up; settings in {directory / 'stack.env'}", file=sys.stderr)


def stop_parts(state: dict, names: list[str], grace_s: float = 30) -> None:
    """SIGTERM to each part's process group at once, SIGKILL to what still runs ``grace_s``
    later."""
    groups = []
    for name in names:
        pid = state["parts"][name].get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                groups.append(pid)
    started = time.monotonic()
    while groups and time.monotonic() < started + grace_s:
        groups = [pid for pid in groups if group_alive(pid)]
        time.sleep(0.5)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    killed = [n for n in names if state["parts"][n].get("pid") in groups]
    print(f"stack: stopped {', '.join(names)} in {time.monotonic() - started:.0f} s"
          + (f"; killed {', '.join(killed)} (no exit within {grace_s:.0f} s of SIGTERM)"
             if killed else ""),
          file=sys.stderr)


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(directory: Path) -> None:
    """The whole stack, for good, so the grace is short: at the end of CI runs the worker
    (and MLflow) outlasted 30 s of SIGTERM, for reasons not found."""
    stop_parts(load(directory), ["worker", "prefect", "mlflow", "llm", "s3"], grace_s=5)


def restart(directory: Path, name: str) -> None:
    state = load(directory)
    if name == "postgres":
        restart_postgres(state)
        return
    stop_parts(state, [name])
    proc = spawn(state, name)
    save(state)
    ready(state, name, proc)


def restart_postgres(state: dict) -> None:
    data = state.get("pg_data")
    if not data:
        raise StackError("the stack was started without OCEANML_PG_DATA: PostgreSQL is not ours")
    pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
    subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D", data, "-m", "fast",
                    "-w", "-t", "60", "restart"], check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("start", "stop", "restart"):
        print(__doc__, file=sys.stderr)
        return 2
    command, directory = argv[0], Path(argv[1]).resolve()
    try:
        if command == "start":
            try:
                start(directory)
            except BaseException:
                if (directory / "stack.json").exists():
                    stop(directory)
                raise
        elif command == "stop":
            stop(directory)
        else:
            restart(directory, argv[2])
    except StackError as err:
        print(f"stack: FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
