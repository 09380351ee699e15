"""What PyTorch sees on this machine: torch, its CUDA / cuDNN / NCCL, the GPUs and their driver.

``cluster.yaml`` runs it at the end of every node's setup, so ``ray up`` (and the autoscaler's
log, ``ray monitor cluster.yaml``) shows which wheel each node got and which driver it met;
``docs/cluster.md`` says how to read the lines. No Ray is imported.

The exit code is 1 when the machine has a GPU (``nvidia-smi`` lists one, or ``--expect-gpu``
says it must) that torch cannot use: a CPU wheel, a driver too old for the wheel's CUDA, a GPU
the wheel has no kernels for. A machine without a GPU and without ``--expect-gpu`` exits 0.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Driver:
    """What ``nvidia-smi`` says: one ``(name, driver version)`` per GPU, the newest CUDA the
    driver supports (``"13.2"``), and why nothing was read (``""`` when it ran)."""

    gpus: tuple[tuple[str, str], ...] = ()
    cuda: str = ""
    problem: str = ""


@dataclass
class Report:
    """The printed lines and the problems found (empty: torch can use every GPU it should)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _smi(*args: str) -> str:
    return subprocess.run(
        ["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def read_driver() -> Driver:
    """Ask ``nvidia-smi`` (absent on a machine without an NVIDIA driver) for the GPUs."""
    if shutil.which("nvidia-smi") is None:
        return Driver(
            problem="nvidia-smi not found (no NVIDIA driver, or not passed to this container)"
        )
    try:
        rows = _smi("--query-gpu=name,driver_version", "--format=csv,noheader")
        banner = _smi()
    except (OSError, subprocess.SubprocessError) as err:
        out = getattr(err, "stdout", "") or getattr(err, "stderr", "") or str(err)
        return Driver(problem=f"nvidia-smi failed: {out.strip().splitlines()[0] if out else err}")
    gpus = tuple(
        tuple(part.strip() for part in row.rsplit(",", 1))
        for row in rows.splitlines()
        if row.strip()
    )
    match = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return Driver(gpus=gpus, cuda=match.group(1) if match else "")


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:2])


def _cudnn(torch) -> str:
    v = torch.backends.cudnn.version()  # e.g. 92000 for 9.20.0; None without cuDNN
    return "none" if not v else f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def _nccl(torch) -> str:
    try:
        return ".".join(str(p) for p in torch.cuda.nccl.version())
    except (AttributeError, RuntimeError):  # a CPU build has no NCCL
        return "none"


def report(driver: Driver, expect_gpu: bool = False) -> Report:
    """The lines to print and the problems, for ``driver`` and the torch imported here."""
    import torch

    r = Report()
    wheel_cuda = torch.version.cuda
    r.lines += [
        f"python {sys.version.split()[0]}, torch {torch.__version__}",
        f"wheel: CUDA {wheel_cuda or 'none (CPU build)'}, cuDNN {_cudnn(torch)}, "
        f"NCCL {_nccl(torch)}",
    ]
    if driver.gpus:
        for i, (name, version) in enumerate(driver.gpus):
            r.lines.append(f"nvidia-smi: GPU {i}: {name}, driver {version}")
        r.lines.append(f"driver supports CUDA up to {driver.cuda or '?'}")
    else:
        r.lines.append(f"nvidia-smi: no GPU ({driver.problem or 'none listed'})")
    has_gpu = bool(driver.gpus) or expect_gpu
    available = torch.cuda.is_available()
    r.lines.append(f"torch.cuda.is_available(): {available}")
    if not has_gpu:
        return r
    if not driver.gpus:
        r.problems.append(f"a GPU was expected but {driver.problem or 'nvidia-smi lists none'}")
    if not wheel_cuda:
        r.problems.append("torch is a CPU build: install the CUDA wheel on GPU nodes")
    elif driver.cuda and _version(driver.cuda)[:1] < _version(wheel_cuda)[:1]:
        r.problems.append(
            f"the driver supports CUDA {driver.cuda}, the wheel needs CUDA {wheel_cuda}: "
            "use a newer driver (image) or a wheel for an older CUDA"
        )
    if not available:
        r.problems.append("torch.cuda.is_available() is False on a node that has a GPU")
        return r
    r.lines.append(f"wheel kernels: {' '.join(torch.cuda.get_arch_list())}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        try:  # a real kernel: "no kernel image is available" shows here, not in is_available()
            ok = float((torch.ones(8, device=f"cuda:{i}") * 2).sum()) == 16.0
        except RuntimeError as err:
            ok = False
            r.problems.append(f"cuda:{i}: a kernel failed ({str(err).strip().splitlines()[0]})")
        with torch.cuda.device(i):
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        r.lines.append(
            f"cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
            f"bf16 {'yes' if bf16 else 'no'}, kernel {'ok' if ok else 'FAILED'}"
        )
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m distributed.env_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--expect-gpu", action="store_true", help="fail unless torch can use a GPU here")
    args = p.parse_args(argv)
    r = report(read_driver(), args.expect_gpu)
    for line in r.lines:
        print(f"env_report: {line}", flush=True)
    for problem in r.problems:
        print(f"env_report: ERROR: {problem}", file=sys.stderr, flush=True)
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
