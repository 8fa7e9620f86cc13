"""Where evaluations run: in this process (serial, for debugging: `--workers 0`), or on
persistent Ray actors that load the data and the supernet once and then evaluate many genomes.

Ray is embedded by default (`ray.init(address="local")`, started and stopped here); with an
address (`--address HOST:PORT` or `RAY_ADDRESS`) the actors run on that cluster instead, which
is left running. A worker process that dies mid-evaluation costs a retry on another worker
(bounded); a candidate that fails by itself comes back as a failed result and is not retried."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from evaluators.base import EvalResult
from spaces.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Job:
    key: str
    genome: dict
    seed: int
    attempts: int = 0


class InProcess:
    """Evaluate one genome at a time in this process."""

    kind = "in-process"

    def __init__(self, evaluator):
        self.evaluator, self.slots, self._queue = evaluator, 1, []
        self.startup_s = 0.0

    def submit(self, key: str, genome: dict, seed: int) -> None:
        self._queue.append(Job(key, genome, seed))

    def next_result(self):
        job = self._queue.pop(0)
        res = self.evaluator.evaluate(job.genome, job.seed)
        res.node = res.node or socket.gethostname()
        return job.key, res

    def close(self) -> None:
        pass


def node_label() -> str:
    """`host/node-id` of the Ray node this runs on (or just the host outside Ray)."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host}/{ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:  # noqa: BLE001 - a label is never worth failing a trial for
        pass
    return host


# see `worker_nice`; benchmarks/results/latency_default.md measures the default run with it
WORKER_NICE = 10


def worker_nice(evaluator) -> int:
    """How much lower the CPU priority of Ray workers is: `WORKER_NICE` (or
    `ARCHSEARCH_WORKER_NICE`) when the evaluator's latency provider measures in a service (the
    TVM providers: one process on the driver's node compiles and times every candidate, and a
    worker's trial waits for its figure, so the service is the search's critical path and its
    compiles should get the cores before training); 0 otherwise."""
    if getattr(getattr(evaluator, "latency", None), "service", None) is None:
        return 0
    return max(0, int(os.environ.get("ARCHSEARCH_WORKER_NICE", WORKER_NICE)))


class EvaluatorActor:
    """A persistent evaluator: data and supernet loaded once, many genomes evaluated."""

    def __init__(self, refs: list, threads: int, nice: int = 0):
        import ray
        import torch

        if nice:
            os.nice(nice)  # below the latency service (`worker_nice`)
        torch.set_num_threads(max(1, int(threads)))
        # the evaluator and the weights come as references inside a list, fetched here, so that a
        # restarted actor fetches them again (the driver keeps them alive)
        evaluator, supernet_state = ray.get(refs)
        self.evaluator = evaluator
        self.evaluator.setup(supernet_state=supernet_state)
        self.node = node_label()

    def evaluate(self, genome: dict, seed: int):
        res = self.evaluator.evaluate(genome, seed)
        res.node = self.node
        return res

    def info(self) -> dict:
        import torch

        return {
            "pid": os.getpid(),
            "node": self.node,
            "threads": torch.get_num_threads(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
        }


def check_ray_address(address: str, timeout: float, file: str | None = None) -> None:
    """A Ray cluster's address must be HOST:PORT and answer within `timeout` seconds: a clear
    error now, instead of `ray.init` waiting for ever on an address nothing listens at."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(file, "address", f"{address!r} is not HOST:PORT")
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            # Ray's GCS speaks gRPC: an HTTP/2 server answers the client preface with SETTINGS
            # (a port that accepts and stays silent, such as a proxy, is no cluster)
            sock.settimeout(max(0.1, timeout - (time.monotonic() - t0)))
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            head = sock.recv(9)
            if len(head) < 4 or head[3] != 4:
                raise ConnectionError("it does not speak gRPC")
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            file, "address", f"no Ray cluster answers at {address} within {timeout:g} s ({why})"
        ) from None


def connect_ray(address: str | None = None, object_store_memory: int | None = None) -> bool:
    """Join the session already connected, the cluster at `address` (or RAY_ADDRESS), or start
    embedded local Ray (`address="local"`). True if this call started Ray (and must stop it)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        log.info("using the Ray session already connected")
        return False
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return False
    cpus = os.cpu_count() or 1
    log.info("starting embedded Ray (%d CPUs)", cpus)
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        object_store_memory=object_store_memory,
    )
    return True


class RayExecutor:
    """`workers` persistent evaluator actors on embedded local Ray or a cluster."""

    kind = "ray"

    def __init__(
        self,
        evaluator,
        workers: int | None,
        address: str | None = None,
        cpus_per_worker: float | None = None,
        max_retries: int = 2,
        object_store_memory: int | None = None,
        connect_timeout: float = 30.0,  # checked before the run starts (search.run)
        gpus_per_worker: float | None = None,
    ):
        import ray

        t0 = time.time()
        self.ray, self.max_retries = ray, max_retries
        self.started_here = connect_ray(address, object_store_memory)
        total = int(ray.cluster_resources().get("CPU", 1))
        if workers is None:  # all cores
            cpw = cpus_per_worker or 1
            workers = max(1, int(total // cpw))
        cpw = cpus_per_worker or max(1, total // max(1, workers))
        self.cpus_per_worker = cpw
        self.gpus_per_worker = gpu_share(evaluator, workers, gpus_per_worker)
        self.evaluator = evaluator
        evaluator.start_workers()  # tvm latency: one process on this node measures for every worker
        self.nice = worker_nice(evaluator)
        self._refs = [
            ray.put(evaluator.detached()),
            ray.put(evaluator.supernet_state()),
        ]  # alive as long as the executor
        # no Ray restarts: a dead worker is replaced here, so retries stay bounded and visible
        self._actor_cls = ray.remote(EvaluatorActor).options(
            num_cpus=cpw,
            num_gpus=self.gpus_per_worker,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        )
        self.actors = [self._new_actor() for _ in range(workers)]
        self.replaced = 0
        infos = ray.get([a.info.remote() for a in self.actors])  # fail here, not mid-run
        self.pids: list[int | None] = [i["pid"] for i in infos]
        self.slots = workers
        self.idle = list(range(workers))
        self.running: dict = {}  # ObjectRef -> (actor index, Job)
        self.startup_s = time.time() - t0
        log.info(
            "%d Ray evaluator workers (%g CPU each, torch threads %s%s) on %d node(s), "
            "ready in %.1f s",
            workers,
            cpw,
            sorted({i["threads"] for i in infos}),
            f", niceness {sorted({i['nice'] for i in infos})}" if self.nice else "",
            len({i["node"] for i in infos}),
            self.startup_s,
        )

    def _new_actor(self):
        return self._actor_cls.remote(self._refs, max(1, int(self.cpus_per_worker)), self.nice)

    def _dispatch(self, job: Job, avoid: int | None = None) -> None:
        order = [i for i in self.idle if i != avoid] or self.idle
        idx = order[0]
        self.idle.remove(idx)
        ref = self.actors[idx].evaluate.remote(job.genome, job.seed)
        self.running[ref] = (idx, job)

    def submit(self, key: str, genome: dict, seed: int) -> None:
        if not self.idle:
            raise RuntimeError("no idle worker: wait for a result before submitting")
        self._dispatch(Job(key, genome, seed))

    def next_result(self):
        """Block until one evaluation finishes; retries those whose worker died."""
        ray = self.ray
        while True:
            ready, _ = ray.wait(list(self.running), num_returns=1)
            ref = ready[0]
            idx, job = self.running.pop(ref)
            try:
                res = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # bad input met on a worker: stop the run
                if isinstance(e.cause, ConfigError):
                    raise e.cause from None
                raise
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError,
            ) as e:
                job.attempts += 1
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                self.actors[idx] = self._new_actor()  # a fresh worker takes the dead one's place
                self.pids[idx] = None
                self.replaced += 1
                self.idle.append(idx)
                if job.attempts <= self.max_retries:
                    log.warning(
                        "worker %d died evaluating %s (%s); retry %d/%d on another worker",
                        idx,
                        job.key,
                        why,
                        job.attempts,
                        self.max_retries,
                    )
                    self._dispatch(job, avoid=idx)
                    continue
                return job.key, EvalResult(
                    job.key, "failed", {}, reason=f"worker died {job.attempts} times: {why}"
                )
            self.idle.append(idx)
            return job.key, res

    def close(self) -> None:
        ray = self.ray
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
        self.evaluator.stop_workers()
        if self.started_here:  # only what this run started; a cluster given by address stays up
            ray.shutdown()


def gpu_share(evaluator, workers: int, asked: float | None) -> float:
    """GPUs each worker asks Ray for: `ray.gpus_per_worker` if set, else the cluster's GPUs
    shared by the workers when the evaluator trains on CUDA, else none. CUDA asked for on a
    cluster without GPUs is a ConfigError naming `device`."""
    import ray

    if asked is not None:
        return asked
    if not evaluator.wants_gpu():
        return 0.0
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus <= 0:
        raise ConfigError(None, "device", "training on CUDA, but the Ray cluster has no GPU")
    return gpus / max(1, workers)


def make_executor(evaluator, workers: int | None, address: str | None = None, **ray_options):
    """In-process for `workers == 0`, Ray otherwise (None: one worker per core)."""
    if workers == 0:
        return InProcess(evaluator)
    return RayExecutor(evaluator, workers, address, **ray_options)
