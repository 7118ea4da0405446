"""Real SLURM test: a one-node SLURM cluster on localhost runs the tiny test workflow through the
`slurm` profile, and its outputs must equal a local run's.

    python tests/slurm/run.py [--keep]   # exit 0: passed, 1: failed, 77: skipped (reason printed)

What it does: installs Debian's slurmctld/slurmd/slurm-client/munge where missing (apt-get; needs
root, or passwordless sudo, under which the script re-runs itself), writes a munge key, slurm.conf
and gres.conf (two stand-in GPUs) into a temporary directory (no systemd, no system files touched),
starts munged, slurmctld and slurmd in the foreground as children of this process, and runs
tests/config.yaml cut to one SAE variant per weights (tokens, two caches, four training jobs, two
train-split scans, two censuses: 11 SLURM jobs, plus the localrules extract_corpus and table1)
twice: through the cluster (`snakemake --profile slurm --cores 1` from the repository root, GPU
requests switched on for the caching and training rules as `device: cuda` would) and locally
(`--cores 2 --max-threads 1`). It checks the cluster's record of every job (state, memory, GPUs,
GPU jobs side by side) and compares activation caches, SAE weights and census tables: both runs
give every job one thread, so the float reductions are the same and the outputs must be
bit-identical (census summaries: equal, their float sums to 1e-12 relative). Every daemon it
started is stopped by its PID on exit, also on failure or SIGINT/SIGTERM (and gets SIGTERM from the
kernel should this script be killed outright).
"""

from __future__ import annotations

import argparse
import ctypes
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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = 77
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol",
            "scancel"]
SBIN = "/usr/sbin:/sbin"
GPU_FILES = ["/dev/null", "/dev/zero"]  # the test node's stand-in GPUs


def say(msg: str) -> None:
    """One line of progress, prefixed so that it stands out in the CI log."""
    print(f"[slurm-test] {msg}", flush=True)


class Skip(Exception):
    """The test cannot run on this machine (the message says why)."""


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + SBIN)


# ---------------------------------------------------------------------------------------------
# privileges and installation


def ensure_root(argv: list[str]) -> None:
    """Re-run this script under passwordless sudo when not root; skip when that is impossible.

    slurmd must run as root to start jobs, and apt-get needs root to install the daemons.
    """
    if os.geteuid() == 0:
        return
    sudo = which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0:
        say("not root: re-running under sudo")
        cmd = ["sudo", "-n", "env", f"PATH={os.environ.get('PATH', '')}:{SBIN}",
               sys.executable, str(Path(__file__).resolve()), *argv]
        raise SystemExit(subprocess.run(cmd).returncode)
    raise Skip("needs root or passwordless sudo (slurmd runs jobs as root; apt-get installs it)")


def ensure_installed() -> None:
    """Install Debian's SLURM and munge packages where any of the needed programs is missing."""
    missing = [b for b in BINARIES if which(b) is None]
    if not missing:
        return
    if which("apt-get") is None:
        raise Skip(f"{', '.join(missing)} missing and no apt-get to install {' '.join(PACKAGES)}")
    say(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # a package's postinst must not start system-wide daemons: deny it, as container images do
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            proc = subprocess.run(install, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise Skip(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stderr[-2000:]}")
    finally:
        if own_policy:
            policy.unlink()
    still = [b for b in BINARIES if which(b) is None]
    if still:
        raise Skip(f"still missing after installation: {', '.join(still)}")


# ---------------------------------------------------------------------------------------------
# the cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _die_with_parent() -> None:
    """In a daemon's child process: get SIGTERM when this script dies, even by SIGKILL, so that
    no daemon outlives it (Linux prctl PR_SET_PDEATHSIG; elsewhere the finally: block does it)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Cluster:
    """munged + slurmctld + slurmd on localhost; configuration, state and logs under ``root``."""

    def __init__(self, root: Path, cpus: int, mem_mb: int) -> None:
        self.root = root
        self.cpus = cpus
        self.mem_mb = mem_mb
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = root / "slurm.conf"
        self.socket = root / "run" / "munge.socket"
        # the jobstep plugin strips SLURM_CONF (all SLURM_* but the job's identity) from the
        # environment of the `srun` it starts inside each job; a real cluster's srun finds
        # /etc/slurm/slurm.conf, ours finds this config through a shim first on PATH
        self.shims = root / "bin"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.env["PATH"] = os.pathsep.join([str(self.shims), self.env.get("PATH", ""), SBIN])

    def write_config(self) -> None:
        r = self.root
        # munged wants its key private and its socket's directory searchable by everyone
        for d, mode in (("munge", 0o700), ("run", 0o755), ("state", 0o700), ("spool", 0o700),
                        ("log", 0o700), ("bin", 0o755)):
            (r / d).mkdir()
            (r / d).chmod(mode)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        srun = self.shims / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {which("srun")} "$@"\n')
        srun.chmod(0o755)
        # jobs share the node: cores and memory are consumable, and a job that names no memory
        # gets DefMemPerCPU per CPU rather than the whole node
        self.conf.write_text(f"""\
ClusterName=saestabtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(256, self.mem_mb // (4 * self.cpus))}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
KillWait=5
InactiveLimit=0
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} \
Gres=gpu:{len(GPU_FILES)} State=UNKNOWN
PartitionName=main Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

        # stand-in GPUs: SLURM counts, schedules and allocates them like real ones; the device
        # files are only named (task/none constrains no devices), and torch sees no CUDA
        (self.conf.parent / "gres.conf").write_text("".join(
            f"NodeName={self.host} Name=gpu File={f}\n" for f in GPU_FILES))

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - lives with the proc
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        say(f"started {name} (pid {self.procs[name].pid})")

    def start(self) -> None:
        self.write_config()
        r = self.root
        self._start("munged", [which("munged"), "--foreground", f"--key-file={r}/munge/munge.key",
                               f"--socket={self.socket}", f"--pid-file={r}/munge/munged.pid",
                               f"--log-file={r}/log/munged.log",
                               f"--seed-file={r}/munge/munged.seed"])
        self.wait_for(lambda: self.socket.exists(), "munged's socket", 20)
        self._start("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", [which("slurmd"), "-D", "-N", self.host, "-f", str(self.conf)])
        self.wait_for(self.node_idle, "the node to come up idle", 60)
        say(f"cluster up: node {self.host}, {self.cpus} CPUs, {self.mem_mb} MB")

    def node_idle(self) -> bool:
        proc = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def wait_for(self, ok: Callable[[], bool], what: str, timeout: float) -> None:
        t0 = time.monotonic()
        while not ok():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for "
                                       f"{what}:\n{self.logs()}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.5)

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check,
                              timeout=60)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (MinJobAge keeps finished ones for 10 minutes),
        as `scontrol show job` fields: JobId, Comment, JobState, NumCPUs, MinMemoryNode, TresPerJob,
        StartTime, EndTime, ..."""
        out = self.run(["scontrol", "show", "job", "--oneliner"]).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines()
                if line.startswith("JobId=")]

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            tail = f.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel remaining jobs, then stop slurmd, slurmctld and munged by their PIDs."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", str(os.geteuid())], check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
            say(f"stopped {name} (pid {p.pid}, exit {p.returncode})")


# ---------------------------------------------------------------------------------------------
# the workflow runs


def write_corpus(workdir: Path) -> None:
    """The workflow test's synthetic corpus (tests/conftest.py), one document per file."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import synthetic_documents

    (workdir / "corpus").mkdir(parents=True)
    for i, text in enumerate(synthetic_documents()):
        (workdir / "corpus" / f"doc{i:03d}.txt").write_text(text)


def snakemake(workdir: Path, config: Path, args: list[str], env: dict[str, str],
              log: Path) -> float:
    """Run snakemake from the repository root; returns the seconds it took."""
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir),
           "--configfile", str(config), *args]
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=900)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise RuntimeError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return took


# ---------------------------------------------------------------------------------------------
# comparison


def _close(a: object, b: object, rtol: float = 1e-12) -> bool:
    """JSON values equal, floats to a relative ``rtol`` (NaN equal to NaN)."""
    import math

    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=0)
    return a == b


def compare_outputs(local: Path, slurm: Path) -> dict[str, int]:
    """Assert that the deterministic outputs of both runs are identical; counts per kind."""
    import numpy as np
    import pandas as pd
    from safetensors.numpy import load_file

    kinds = {
        "cache arrays": ("results/**/cache/*/*.npy", lambda a, b: np.array_equal(
            np.load(a), np.load(b))),
        "SAE weights": ("results/**/saes/**/sae_weights.safetensors", _same_tensors(load_file)),
        "census tables": ("results/**/stability/*/*.parquet", lambda a, b: pd.read_parquet(a)
                          .equals(pd.read_parquet(b))),
        # float sums over activations (e.g. the train-split EV) may differ in the last bit
        # between two processes; everything else in a census summary must be equal
        "census summaries": ("results/**/stability/*/summary.json", lambda a, b: _close(
            json.loads(a.read_text()), json.loads(b.read_text()))),
        "table 1": ("results/tables/table1.csv", lambda a, b: a.read_bytes() == b.read_bytes()),
    }
    counts: dict[str, int] = {}
    bad = []
    for kind, (pattern, same) in kinds.items():
        files = sorted(local.glob(pattern))
        if not files:
            raise AssertionError(f"the local run wrote no {kind} ({pattern})")
        for a in files:
            b = slurm / a.relative_to(local)
            if not b.exists():
                bad.append(f"{b.relative_to(slurm)}: missing from the SLURM run")
            elif not same(a, b):
                bad.append(f"{b.relative_to(slurm)}: differs")
        counts[kind] = len(files)
    if bad:
        raise AssertionError("SLURM outputs differ from the local run's:\n  " + "\n  ".join(bad))
    return counts


def _same_tensors(load_file: Callable) -> Callable[[Path, Path], bool]:
    import numpy as np

    def same(a: Path, b: Path) -> bool:
        ta, tb = load_file(str(a)), load_file(str(b))
        return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)

    return same


# ---------------------------------------------------------------------------------------------


GPU_RULES = ("cache_activations", "train_saes")  # gpu=gpu_request() in the rules
GPU_REQUESTS = [f"{r}:gpu=1" for r in GPU_RULES]
SLURM_RULES = ("tokenize", *GPU_RULES, "scan_features", "stability_census")  # extract_corpus: local


def rule_of(job: dict[str, str]) -> str:
    """The rule a SLURM job ran: the plugin's comment is rule_<name>[_wildcards_<...>]."""
    return job["Comment"].split("_wildcards_")[0].removeprefix("rule_")


def requested_gpus(job: dict[str, str]) -> int:
    """GPUs a job asked SLURM for (sbatch --gpus=N is TresPerJob=gres:gpu:N); SLURM starts such
    a job only once it can allocate them (the TRES tally of GPUs needs slurmdbd)."""
    m = re.search(r"gres:gpu:(\d+)", job.get("TresPerJob", ""))
    return int(m.group(1)) if m else 0


def _overlap(a: dict[str, str], b: dict[str, str]) -> bool:
    return a["StartTime"] < b["EndTime"] and b["StartTime"] < a["EndTime"]


def check_jobs(jobs: list[dict[str, str]]) -> None:
    """The cluster's record of the run: every job completed, every non-local rule went through
    SLURM and no localrule did, memory as declared (rule or profile default), GPUs on the GPU
    rules only, and GPU jobs running at the same time."""
    failed = [j for j in jobs if j["JobState"] != "COMPLETED"]
    if not jobs or failed:
        raise AssertionError(f"SLURM jobs not completed: {failed or 'no jobs at all'}")
    rules = {rule_of(j) for j in jobs}
    if rules != set(SLURM_RULES):
        raise AssertionError(f"rules run through SLURM: {sorted(rules)}, expected "
                             f"{sorted(SLURM_RULES)} (extract_corpus and table1 are localrules)")
    for j in jobs:
        mem = "8000M" if rule_of(j) in SLURM_RULES[1:] else "4000M"  # tokenize: the default
        want = 1 if rule_of(j) in GPU_RULES else 0
        if j["MinMemoryNode"] != mem or requested_gpus(j) != want:
            raise AssertionError(f"job {j['JobId']} ({rule_of(j)}): mem {j['MinMemoryNode']}, "
                                 f"TresPerJob {j.get('TresPerJob')}; expected {mem}, {want} GPU")
    gpu_jobs = [j for j in jobs if rule_of(j) in GPU_RULES]
    if not any(_overlap(a, b) for a in gpu_jobs for b in gpu_jobs if a is not b):
        raise AssertionError("no two GPU jobs ran at the same time: is the local gpu=1 limit "
                             "capping the cluster run?")


def study_config(path: Path) -> list[str]:
    """tests/config.yaml cut to one SAE variant on each weights (11 SLURM jobs instead of ~25)
    written to ``path``; returns the targets both runs build."""
    import yaml

    cfg = yaml.safe_load((REPO / "tests" / "config.yaml").read_text())
    cfg["sae"]["runs"] = {"trained": ["topk"], "random": ["topk"]}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    hook = cfg["models"]["tiny"]["hooks"][0]
    # the census pulls in corpus, tokens, caches and training; table1 is a localrule
    return [f"results/tiny/{w}/{hook}/stability/topk/summary.json" for w in ("trained", "random")
            ] + ["results/tables/table1.md"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    try:
        ensure_root(argv)
        ensure_installed()
    except Skip as reason:
        say(f"SKIPPED: {reason}")
        return SKIP
    cluster = None
    tmp = Path(tempfile.mkdtemp(prefix="saestab-slurm-"))

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        tmp.chmod(0o711)  # munged wants its socket's directories searchable
        (tmp / "cluster").mkdir()
        (tmp / "cluster").chmod(0o711)
        cluster = Cluster(tmp / "cluster", cpus=os.cpu_count() or 1,
                          mem_mb=int(mem_total_mb() * 0.9))
        cluster.start()

        env = dict(cluster.env, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
        config = tmp / "config.yaml"
        targets = study_config(config)
        local_wd, slurm_wd = tmp / "local", tmp / "slurm"
        write_corpus(local_wd)
        write_corpus(slurm_wd)
        # as a user types it from the repository root, plus: one thread per job (as in the
        # local run below), the first status check after 2 s instead of 40 s, the SLURM logs
        # of successful jobs kept, and the GPU request that `device: cuda` makes (the tiny
        # config runs on CPU; SLURM allocates a stand-in GPU, torch still sees none)
        t_slurm = snakemake(slurm_wd, config, ["--profile", "slurm", "--cores", "1",
                                               "--slurm-init-seconds-before-status-checks", "2",
                                               "--slurm-keep-successful-logs",
                                               "--set-resources", *GPU_REQUESTS, "--", *targets],
                            env, tmp / "slurm.log")
        jobs = sorted(cluster.jobs(), key=lambda j: int(j["JobId"]))
        say(f"SLURM run finished in {t_slurm:.0f} s; {len(jobs)} jobs went through SLURM:")
        for j in jobs:
            gpus = requested_gpus(j)
            say(f"  job {j['JobId']:>3} {j['JobState']:<10} cpus={j['NumCPUs']} "
                f"mem={j['MinMemoryNode']:<5} gpus={gpus} "
                f"partition={j['Partition']} {j['StartTime'][11:]}-{j['EndTime'][11:]} "
                f"{j['Comment']}")
        check_jobs(jobs)
        say("SLURM ran every non-local rule with its declared memory and GPU requests; GPU jobs "
            "ran side by side (the local one-GPU-job limit does not cap cluster runs)")

        t_local = snakemake(local_wd, config, ["--cores", "2", "--max-threads", "1", *targets],
                            env, tmp / "local.log")
        say(f"local run finished in {t_local:.0f} s")
        counts = compare_outputs(local_wd, slurm_wd)
        say("outputs match the local run bit for bit (census summary floats to 1e-12): " +
            ", ".join(f"{n} {kind}" for kind, n in counts.items()))
        say(f"PASSED in {time.monotonic() - t_start:.0f} s")
        return 0
    except Exception as err:  # noqa: BLE001 - reported, with the daemons' logs
        say(f"FAILED: {err}")
        if cluster is not None:
            print(cluster.logs(), flush=True)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
