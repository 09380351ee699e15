"""The cluster path, as far as one machine allows: cluster.yaml, token-authenticated job
submission, a simulated two-node cluster and storage through ``file://`` URIs.

Clusters other than the session instance run in separate processes (a ``ray start --head
--block`` process group, or a helper script) with their own temp dir and ports, and are torn down
by process group and by the temp dir in their command lines, never by ``ray stop``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable  # the environment's python: a bare `python` on PATH may lack Ray
RAY_CLI = str(Path(sys.executable).with_name("ray"))
SCRIPTS = Path(__file__).resolve().parent / "cluster_scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_mentioning(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (our private temp dir):
    Ray agents ignore SIGTERM and a job's driver may sit in its own session."""
    me = os.getpid()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == me:
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except OSError:
                pass


# --- cluster.yaml -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_cfg() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.mark.timeout(60)
def test_cluster_yaml_passes_ray_validation(cluster_cfg):
    """The schema and consistency checks `ray up` runs before contacting the cloud."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster_cfg)))
    broken = copy.deepcopy(cluster_cfg)
    broken["available_node_types"]["gpu_1x"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: wrong types are refused
        validate_config(prepare_config(broken))


@pytest.mark.timeout(60)
def test_cluster_yaml_is_safe_by_default(cluster_cfg):
    import ray

    cfg = cluster_cfg
    head_type = cfg["head_node_type"]
    types = cfg["available_node_types"]
    workers = {k: v for k, v in types.items() if k != head_type}
    start_head = " ".join(cfg["head_start_ray_commands"])
    start_workers = " ".join(cfg["worker_start_ray_commands"])
    everything = yaml.safe_dump(cfg)

    # The image is the Ray this environment runs, GPU flavour.
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert "head_image" not in cfg["docker"] and "worker_image" not in cfg["docker"]
    # The head trains nothing; GPU workers scale from zero and go away when idle.
    assert types[head_type]["resources"].get("CPU") == 0
    assert types[head_type]["resources"].get("GPU", 0) == 0
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert 0 < cfg["idle_timeout_minutes"] <= 30
    # Dashboard / Jobs API on loopback only; nothing anywhere binds 0.0.0.0.
    assert "--dashboard-host=127.0.0.1" in start_head
    assert "0.0.0.0" not in everything
    # Only SSH from outside: no extra ingress rules, no pre-made groups that might hold others.
    sg = cfg["provider"].get("security_group", {})
    for rule in sg.get("IpPermissions", []):
        assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (22, 22, "tcp")
    assert not any("SecurityGroupIds" in t["node_config"] for t in types.values())
    # Token auth on every node: in the container env of all nodes and in both start commands.
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    token_path = run_options.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0]
    for start in (start_head, start_workers):
        assert "RAY_AUTH_MODE=token" in start and f"RAY_AUTH_TOKEN_PATH={token_path}" in start
    # ... and the token file is where RAY_AUTH_TOKEN_PATH says: a directory in file_mounts
    # (bind-mounted into every container), checked before Ray starts.
    assert os.path.dirname(token_path) in cfg["file_mounts"]
    assert any(token_path in c for c in cfg["setup_commands"])
    assert ".gitignore" in cfg["rsync_filter"]  # never sync .venv, runs, demo data


def node_setup(cfg: dict, node_type: str) -> list[str]:
    """The setup commands a node of ``node_type`` runs, in Ray's order: ``setup_commands``,
    then the head's or the workers' own (a node type may override the latter)."""
    own = "head_setup_commands" if node_type == cfg["head_node_type"] else "worker_setup_commands"
    return [*cfg["setup_commands"], *cfg["available_node_types"][node_type].get(own, cfg[own])]


CUDA_INDEX = re.compile(r"torch==(\S+) --index-url https://download\.pytorch\.org/whl/cu(\d+)\b")
CPU_INDEX = re.compile(r"torch==(\S+) --index-url https://download\.pytorch\.org/whl/cpu\b")


@pytest.mark.timeout(60)
def test_cluster_yaml_gpu_nodes_get_an_image_the_cuda_wheel_and_a_version_report(cluster_cfg):
    """GPU node types name their AMI, install torch from the CUDA wheel index (the head from
    the CPU one), print the versions, and one node type holds an 8-worker trial."""
    cfg, text = cluster_cfg, (REPO / "cluster.yaml").read_text()
    types = cfg["available_node_types"]
    gpu_types = [k for k, t in types.items() if t["resources"].get("GPU", 0) > 0]
    make = (REPO / "Makefile").read_text()
    torch_pin = make.split("pip install --quiet torch==")[1].split()[0]
    assert gpu_types and cfg["head_node_type"] not in gpu_types
    # The image: named by its public name, with a region-specific id and how to find the current.
    assert "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)" in text
    assert "aws ec2 describe-images" in text and "region" in text.lower()
    for name in gpu_types:
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", types[name]["node_config"].get("ImageId", ""))
    # No torch for everybody: the head's and the workers' setups choose the wheel.
    assert not any("torch==" in c for c in cfg["setup_commands"])
    for name in types:
        setup = " ".join(node_setup(cfg, name))
        index = CPU_INDEX if name == cfg["head_node_type"] else CUDA_INDEX
        wheel = index.search(setup)
        assert wheel, f"{name}: {setup}"
        assert wheel.group(1) == torch_pin  # the version `make install` pins locally
        assert setup.index(wheel.group(0)) < setup.index('".[test]"') < setup.index("env_report")
        other = CUDA_INDEX if index is CPU_INDEX else CPU_INDEX
        assert not other.search(setup), f"{name}: both wheels"
        if name in gpu_types:
            assert "python -m distributed.env_report --expect-gpu" in setup
    # An 8-worker trial fits on one node, with CPUs for its workers and Ray Data.
    eight = [t for t in types.values() if t["resources"].get("GPU") == 8]
    assert eight and all(t["resources"]["CPU"] >= 8 and t["max_workers"] >= 1 for t in eight)


def fake_nvidia_smi(folder: Path, rows: str, cuda: str) -> None:
    """An ``nvidia-smi`` on PATH that answers the two questions env_report asks."""
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--query-gpu=name,driver_version" ]; then printf "{rows}"; exit 0; fi\n'
        f'echo "| NVIDIA-SMI 595.91.07   Driver Version: 595.91.07   CUDA Version: {cuda} |"\n'
    )
    script.chmod(0o755)


@pytest.mark.timeout(120)
def test_env_report_prints_versions_and_fails_where_a_gpu_is_unusable(tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    """What every node's setup runs: Ray-free; exit 0 on a CPU machine, 1 where a GPU is present
    (or expected) but torch cannot use it."""
    import torch

    from distributed import env_report

    # As the head's setup runs it (no GPU here): the versions, exit 0, no Ray imported.
    code = "import sys; from distributed import env_report as e; r = e.main([]); " \
           "print('ray imported:', 'ray' in sys.modules); sys.exit(r)"  # fmt: skip
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(PY).parent), "/usr/bin", "/bin"])}
    run = subprocess.run([PY, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=100)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"torch {torch.__version__}" in run.stdout and "ray imported: False" in run.stdout
    assert "cuDNN" in run.stdout and "NCCL" in run.stdout and "nvidia-smi: no GPU" in run.stdout
    if torch.cuda.is_available():
        pytest.skip("the failing cases need a machine whose torch cannot use a GPU")
    # A GPU worker's setup where nothing answers: --expect-gpu fails.
    assert env_report.main(["--expect-gpu"]) == 1
    assert "a GPU was expected" in capsys.readouterr().err
    # A node whose driver lists a GPU but whose torch cannot use it (here: the CPU wheel).
    fake_nvidia_smi(tmp_path, "NVIDIA A10G, 595.91.07\\n", "13.2")
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), os.environ["PATH"]]))
    assert env_report.main([]) == 1
    out, err = capsys.readouterr()
    assert "GPU 0: NVIDIA A10G, driver 595.91.07" in out and "up to 13.2" in out
    assert "torch.cuda.is_available() is False" in err
    assert ("CPU build" in err) == (torch.version.cuda is None)
    # The driver-versus-wheel rule, on its own: a CUDA 13 wheel needs a CUDA 13 driver.
    old = env_report.Driver(gpus=(("NVIDIA A10G", "535.1"),), cuda="12.2")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    problems = env_report.report(old).problems
    assert any("the driver supports CUDA 12.2, the wheel needs CUDA 13.0" in p for p in problems)
    fine = env_report.Driver(gpus=old.gpus, cuda="13.2")
    assert not any("driver supports" in p for p in env_report.report(fine).problems)


# --- token-authenticated head on loopback, job submission -------------------------------------


@pytest.fixture(scope="module")
def token_head():
    """A `ray start --head` on loopback with token auth, in its own process group and temp dir."""
    tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Unix socket path limit
    token_file = tmp / "auth_token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        PATH=os.pathsep.join([str(Path(PY).parent), env.get("PATH", "")]),
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        RAY_TRAIN_V2_ENABLED="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    # The README's token workflow. `ray get-auth-token --generate` always writes
    # $HOME/.ray/auth_token (and fails if RAY_AUTH_TOKEN_PATH names a missing file), so it runs
    # with a private HOME and its stdout becomes the file RAY_AUTH_TOKEN_PATH names.
    gen_env = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    gen_env["HOME"] = str(tmp / "gen")
    gen = subprocess.run(
        [RAY_CLI, "get-auth-token", "--generate"], env=gen_env, capture_output=True, text=True
    )
    assert gen.returncode == 0, gen.stderr
    token = gen.stdout.strip()
    assert len(token) >= 32 and (tmp / "gen" / ".ray" / "auth_token").read_text() == token
    token_file.write_text(token)
    token_file.chmod(0o600)
    dash = free_port()
    cmd = [RAY_CLI, "start", "--head", "--block", "--disable-usage-stats",
           f"--temp-dir={tmp / 'ray'}", "--num-cpus=4", "--num-gpus=0",
           "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}"]  # fmt: skip
    log = open(tmp / "head.log", "w")  # closed in teardown
    head = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:  # ready when the Jobs API answers an authenticated request
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.time() < deadline, "head did not come up"
            req = urllib.request.Request(
                f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        yield {"url": url, "env": env, "token": token, "tmp": tmp}
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except OSError:
            pass
        kill_mentioning(str(tmp))
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=10
        ) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.timeout(120)
def test_jobs_api_refuses_requests_without_the_token(token_head):
    url, token = token_head["url"], token_head["token"]
    assert http_status(f"{url}/api/jobs/") == 401
    assert http_status(f"{url}/api/jobs/", {"Authorization": "Bearer " + "0" * 32}) in (401, 403)
    assert http_status(f"{url}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200

    submit = [RAY_CLI, "job", "submit", "--address", url, "--", PY, "-c", "print('pwned')"]
    # No token on the client side: an empty HOME and a token path that does not exist.
    home = token_head["tmp"] / "empty-home"
    home.mkdir(exist_ok=True)
    missing = {**token_head["env"], "HOME": str(home),
               "RAY_AUTH_TOKEN_PATH": str(home / "none")}  # fmt: skip
    wrong = {**token_head["env"], "RAY_AUTH_TOKEN": "f" * len(token)}
    for env in (missing, wrong):
        r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=90)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert "token" in out.lower(), out
        assert "pwned" not in out


@pytest.mark.timeout(900)
def test_state_api_finds_our_instance_next_to_another_one(token_head, ray_session):
    """Ray Train's placement-group cleaner asks Ray's state API whether a stopped trial's
    controller is dead. With a second Ray instance on the machine (the token head here) the API
    cannot pick one by scanning processes; init_ray hands our workers the address instead."""
    import ray
    from ray._private.services import find_gcs_addresses

    assert len(find_gcs_addresses()) >= 2  # the failing condition is really present

    @ray.remote(num_cpus=0)
    class Alive:
        def ping(self):
            return 1

    actor = Alive.remote()
    ray.get(actor.ping.remote())
    actor_id = actor._actor_id.hex()

    @ray.remote(num_cpus=0, max_retries=0)
    def actor_state(aid):
        from ray.util.state import get_actor

        try:
            return get_actor(aid, timeout=30).state
        except Exception as e:  # noqa: BLE001 - the message is the result here
            return f"{type(e).__name__}: {e}"

    assert ray.get(actor_state.remote(actor_id), timeout=120) == "ALIVE"
    # control: without the address Ray's own lookup fails exactly as the cleaner did
    blind = actor_state.options(runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": ""}})
    assert "multiple active Ray instances" in ray.get(blind.remote(actor_id), timeout=120)
    ray.kill(actor)


def test_job_submission_runs_the_smoke_tune(token_head, gesture_shards):
    """`ray job submit --working-dir <repo>` of the smoke tune, with shards and results on
    ``file://`` URIs, completes; the uploaded package holds the code but not the venv."""
    tmp, url, env = token_head["tmp"], token_head["url"], token_head["env"]
    shards_dir = tmp / "shards"
    shutil.copytree(gesture_shards, shards_dir)
    storage = f"file://{tmp / 'runs'}"
    job_id = "emovis-smoke-tune"
    entry = [PY, "-m", "distributed.tune", "gesture", "--smoke", "--quiet",
             "--shards", f"file://{shards_dir}", "--storage", storage,
             "--samples", "1", "--folds", "1", "--epochs", "1"]  # fmt: skip
    submit = [RAY_CLI, "job", "submit", "--address", url, "--submission-id", job_id,
              "--working-dir", str(REPO), "--", *entry]  # fmt: skip
    deadline = time.time() + 120
    while True:  # the head answers HTTP before its job agent registers (slow on a busy machine)
        r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=840, cwd=tmp)
        if "No available agent" not in r.stderr or time.time() > deadline:
            break
        time.sleep(3)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    status = subprocess.run(
        [RAY_CLI, "job", "status", "--address", url, job_id],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # The CLI prints "Job '<id>' succeeded" for status SUCCEEDED (and nothing like it otherwise).
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, (
        status.stdout + status.stderr
    )

    results = tmp / "runs" / "gesture-smoke"
    report = (results / "results" / "report.md").read_text()
    assert "WAR" in report and "UAR" in report
    final = json.loads((results / "outer0" / "final.json").read_text())
    assert 0.0 <= final["war"] <= 1.0 and 0.0 <= final["uar"] <= 1.0
    assert (results / "models" / "outer0.pt").stat().st_size > 0

    # What --working-dir shipped: the code, without .venv (Ray honours .gitignore).
    unpacked = (tmp / "ray").glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    pkgs = [p for p in unpacked if p.is_dir()]  # next to them: the .zip and its .lock
    assert pkgs, "no working_dir package found on the node"
    for pkg in pkgs:
        assert (pkg / "distributed" / "tune.py").is_file()
        assert (pkg / "cluster.yaml").is_file()
        assert not (pkg / ".venv").exists()


# --- simulated two-node cluster ----------------------------------------------------------------


def run_cluster_script(tmp: Path, env: dict, script: str, *args: str) -> tuple[int, str]:
    """(exit code, output) of ``tests/cluster_scripts/<script>`` in a session of its own;
    whatever it leaves (its simulated cluster's processes) is killed after."""
    proc = subprocess.Popen(
        [PY, str(SCRIPTS / script), *args], env=env, cwd=tmp, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=560)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        kill_mentioning(str(tmp))
    return proc.returncode, log


@pytest.mark.timeout(600)
def test_ddp_across_two_simulated_nodes(gesture_shards):
    """Two Train workers, STRICT_SPREAD over two nodes (one per node), really synchronised."""
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    out = tmp / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_TMPDIR=str(tmp),
        RAY_AUTH_MODE="disabled",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        RAY_TRAIN_V2_ENABLED="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    code, log = run_cluster_script(tmp, env, "two_node_ddp.py", gesture_shards,
                                   f"file://{tmp}/runs", str(out))  # fmt: skip
    try:
        assert code == 0, log[-4000:]
        seen = json.loads(out.read_text())
        assert len(seen["nodes"]) == 2
        assert len(seen["worker_nodes"]) == 2, seen
        assert sorted(set(seen["worker_nodes"])) == seen["nodes"]  # one worker on each node
        params = sorted(Path(seen["params_dir"]).glob("fold0-rank*.pt"))
        assert len(params) == 2
        a, b = (torch.load(p) for p in params)
        assert a.keys() == b.keys()
        for k in a:  # DDP all-reduced every gradient across the nodes
            assert torch.equal(a[k], b[k]), k
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow  # (the default run covers the same retry: test_hostile_tune, a killed trial)
@pytest.mark.timeout(600)
def test_a_trial_whose_node_is_lost_resumes_from_its_checkpoint_on_the_other_node(gesture_shards):
    """Finding 11 of issue 26: the node running a one-worker trial is removed after the trial's
    first checkpoint; the trial restarts on the remaining node from that checkpoint (no epoch
    trained twice from scratch) and the search ends with it complete."""
    tmp = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    out = tmp / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(tmp), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    code, log = run_cluster_script(tmp, env, "lose_node.py", gesture_shards,
                                   str(tmp / "runs"), str(out))  # fmt: skip
    try:
        assert code == 0, log[-4000:]
        seen = json.loads(out.read_text())
        console = seen["console"]
        assert seen["code"] == 0, console[-3000:]
        assert seen["removed"] in seen["nodes"], seen  # the trial's node was removed ...
        others = set(seen["nodes"]) - {seen["removed"]}
        assert set(seen["trial_nodes"]) == others, seen  # ... and it ran again on the other
        assert "trial 1/1 lost its process" in console and "(retry 1 of 2)" in console, console
        (trial,) = json.loads((tmp / "runs" / "x" / "ledger-outer0.json").read_text())["trials"]
        assert trial["end"]["state"] == "complete" and trial["restarts"] == 1, trial
        steps = [(r["fold_index"], r["epoch"]) for r in trial["results"]]
        assert steps.count((0, 0)) == 1 and steps[-1] == (1, 11), steps
        assert (tmp / "runs" / "x" / "results" / "report.md").exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- storage URIs ------------------------------------------------------------------------------


@pytest.mark.timeout(300)  # may pay for building the session shards
def test_file_uri_and_plain_path_see_the_same_shards(gesture_shards, tmp_path):
    """The reader gives identical results through a plain path and a file:// URI, and writes
    through file:// land where the plain path says."""
    from datasets import storage
    from datasets.manifest import read_manifest, read_protocol

    uri = f"file://{Path(gesture_shards).resolve()}"
    assert read_manifest(uri) == read_manifest(gesture_shards)
    assert read_protocol(uri, read_manifest(uri)) == read_protocol(
        gesture_shards, read_manifest(gesture_shards)
    )
    plain_files = storage.list_files(gesture_shards)
    uri_files = storage.list_files(uri)
    assert [os.path.basename(f) for f in uri_files] == [os.path.basename(f) for f in plain_files]
    assert all(f.startswith("file://") for f in uri_files)
    for p, u in zip(plain_files, uri_files):
        assert storage.read_bytes(p) == storage.read_bytes(u)
    target = storage.join(f"file://{tmp_path}", "a", "b.bin")
    storage.atomic_write_bytes(target, b"\x00\x01payload")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01payload"
