"""Kernel search for an input resolution (`pelk search`): multi-objective Optuna over a search space.

A trial samples the knobs of a search space (`compiler.space`), applies them
to the base spec at resolution R and measures the result. The objectives
from the IR cost a compile (milliseconds, no model is built):

* ``params``  non-zero parameters, the paper's count (minimise);
* ``macs``    multiply-adds at the spec's density (minimise);
* ``coverage`` mean over the space's ``coverage_stages`` of |ln(K_i / H_i)|,
  K_i the kernel side and H_i the feature-map side of stage i at R
  (minimise: a kernel about the size of its map). With the default
  stage 1 this reproduces the paper's Table 7 finding: 51 at 224 (56 x 56
  after the stem), 101 at 384 (96 x 96);
* ``min_coverage`` min over all stages of K_i / H_i (maximise);
* ``receptive_field`` theoretical receptive field at the head, in input
  pixels (maximise).

Optional, slower (they build the model, fresh weights):

* ``latency`` ms per image (batch 1, eval, median of timed runs) on the
  current device (minimise);
* ``erf`` high-contribution area ratio at the 20% threshold of the
  effective receptive field at R, over the photographs shipped with
  scikit-image (`compiler.erf`, maximise).

Budgets (``params=30M,macs=6G``) are Optuna constraints (value / limit - 1,
feasible when <= 0); the Pareto front holds feasible trials only.

No two COMPLETE trials evaluate the same architecture: a trial records the
fingerprint of its sampled spec, then looks for another RUNNING or COMPLETE
trial with that fingerprint and is pruned (``duplicate_of``) when it finds
one. Writing before reading makes the check safe between workers sharing a
study: of two trials racing on one architecture at least one sees the other.

Storage: a journal file under ``--out`` by default (no server; several
processes of one machine may share it; about 10 ms a trial), in memory
without ``--out``, or any SQLAlchemy URL (``postgresql://...``) for workers
on several machines. RDB storages run Optuna's heartbeat: the trial of a
killed worker is failed after the grace period and re-queued once
(RetryHeartbeatStaleTrialCallback); the next worker on the study runs it.
On a journal file a starting worker fails the RUNNING trials of dead local
processes instead (`fail_orphans`).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from pydantic import ValidationError

from archspec import ModelSpec, resolve_spec, save_spec
from archspec.files import atomic_directory, atomic_write_text
from compiler.build import build_model, compile_spec
from compiler.space import FloatRange, IntRange, SearchSpace, knob_values, resolve_space


class SearchError(ValueError):
    """A search cannot run as asked (bad objective, budget, storage, or a study made for another search)."""


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "minimize" | "maximize"
    description: str
    builds_model: bool = False


OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (
    Objective("params", "minimize", "non-zero parameters (the paper's count)"),
    Objective("macs", "minimize", "multiply-adds at the spec's density"),
    Objective("coverage", "minimize", "mean |ln(K/H)| over the space's coverage stages"),
    Objective("min_coverage", "maximize", "smallest kernel-to-map ratio K/H over all stages"),
    Objective("receptive_field", "maximize", "theoretical receptive field at the head (pixels)"),
    Objective("latency", "minimize", "ms per image, batch 1, on the current device", builds_model=True),
    Objective("erf", "maximize", "ERF high-contribution area ratio at t=20% (fresh weights)", builds_model=True),
)}
DEFAULT_OBJECTIVES = ("params", "macs", "coverage")
BUDGET_KEYS = ("params", "macs")
_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_objectives(text: str | None) -> list[Objective]:
    """``"params,macs,coverage"`` -> Objectives; unknown or repeated names are SearchErrors."""
    names = [name.strip() for name in (text or ",".join(DEFAULT_OBJECTIVES)).split(",") if name.strip()]
    unknown = [name for name in names if name not in OBJECTIVES]
    if unknown or not names:
        raise SearchError(f"--objectives: unknown objective(s) {unknown or names}; choose from "
                          f"{', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise SearchError(f"--objectives: {names} names an objective twice")
    return [OBJECTIVES[name] for name in names]


def parse_quantity(text: str) -> float:
    """``"30M"`` -> 3e7; suffixes K, M, G, T (case-insensitive)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kmgtKMGT]?)\s*", text)
    if not match:
        raise SearchError(f"{text!r} is not a number with an optional K/M/G/T suffix (e.g. 30M)")
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if not math.isfinite(value):
        raise SearchError(f"{text!r} is too large to be a limit")
    return value


def parse_budget(text: str | None) -> dict[str, float]:
    """``"params=30M,macs=6G"`` -> {"params": 3e7, "macs": 6e9}."""
    budget: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in BUDGET_KEYS:
            raise SearchError(f"--budget: {item!r} is not KEY=VALUE with KEY one of {', '.join(BUDGET_KEYS)}")
        if key in budget:
            raise SearchError(f"--budget: {key} given twice")
        try:
            budget[key] = parse_quantity(value)
        except SearchError as error:
            raise SearchError(f"--budget {key}: {error}") from None
        if budget[key] <= 0:
            raise SearchError(f"--budget {key}: the limit must be positive, got {value!r}")
    return budget


# ---------------------------------------------------------------- space -> spec

def _suggest(trial: optuna.Trial, name: str, knob: Any) -> Any:
    """Ask the trial for a knob's value (a fixed value is returned without a trial parameter)."""
    if knob is None:
        return None
    if isinstance(knob, IntRange):
        return trial.suggest_int(name, knob.low, knob.high, step=knob.step)
    if isinstance(knob, FloatRange):
        return trial.suggest_float(name, knob.low, knob.high, step=knob.step)
    values = knob_values(knob)
    return values[0] if len(values) == 1 else trial.suggest_categorical(name, values)


def sample_choices(trial: optuna.Trial, space: SearchSpace, stage_count: int) -> dict[str, Any]:
    """The trial's values of every knob of the space: {"kernels": [...], "centers": [...], "base_m", ...}."""
    stages = space.stages or []
    if space.kernel_sets is not None:
        sets = {"-".join(map(str, kernels)): kernels for kernels in space.kernel_sets}
        kernels = sets[_suggest(trial, "kernels", list(sets)) if len(sets) > 1 else next(iter(sets))]
    else:
        kernels = [_suggest(trial, f"stage{index + 1}.kernel_size", stages[index].kernel_size)
                   if index < len(stages) else None for index in range(stage_count)]
    shared_center = _suggest(trial, "center", space.center)
    centers = [(_suggest(trial, f"stage{index + 1}.center", stages[index].center)
                if index < len(stages) and stages[index].center is not None else shared_center)
               for index in range(stage_count)]
    return {"kernels": list(kernels), "centers": centers,
            "base_m": _suggest(trial, "base_m", space.base_m),
            "partial_ratio": _suggest(trial, "partial_ratio", space.partial_ratio),
            "width_factor": _suggest(trial, "width_factor", space.width_factor)}


def apply_choices(base: ModelSpec, choices: dict[str, Any], resolution: int, name: str) -> ModelSpec:
    """The base spec with the chosen knobs, at ``resolution``; a knob that is None keeps the base's value.

    Raises ValueError (pydantic's ValidationError) when the combination is not a valid spec.
    """
    data = base.model_dump()
    data["name"], data["input"]["resolution"] = name, resolution
    if choices.get("width_factor") is not None:
        data["width"]["factor"] = choices["width_factor"]
    for index, stage in enumerate(data["stages"]):
        mixer = stage["mixer"]
        kernel = choices["kernels"][index] if index < len(choices["kernels"]) else None
        if kernel is not None:
            mixer["kernel_size"] = kernel
        if choices.get("partial_ratio") is not None:
            mixer["partial_ratio"] = choices["partial_ratio"]
        if mixer["type"] != "peripheral":
            continue
        center = choices["centers"][index] if index < len(choices["centers"]) else None
        if center is not None:
            mixer["sharing"]["center"] = center
        if choices.get("base_m") is not None:
            mixer["sharing"]["base"] = choices["base_m"]
        if kernel is not None or center is not None or choices.get("base_m") is not None:
            mixer["sharing"]["grid"] = None  # an explicit grid of the base no longer fits
    return ModelSpec.model_validate(data)


def validation_message(error: ValidationError) -> str:
    """Why a generated spec is invalid, one ``field: message`` per problem."""
    return "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg'].removeprefix('Value error, ')}"
                     for item in error.errors())


def check_space_fits(space: SearchSpace, base: ModelSpec) -> None:
    """The space must describe as many stages as the base spec has."""
    count = space.stage_count()
    if count is not None and count != len(base.stages):
        raise SearchError(f"search space {space.name!r} describes {count} stages but base spec "
                          f"{base.name!r} has {len(base.stages)}")
    bad = [stage for stage in space.coverage_stages if stage > len(base.stages)]
    if bad:
        raise SearchError(f"search space {space.name!r}: coverage_stages {bad} beyond the "
                          f"{len(base.stages)} stages of {base.name!r}")


# ---------------------------------------------------------------- measuring

def ir_metrics(spec: ModelSpec, coverage_stages: list[int]) -> dict[str, Any]:
    """Everything the IR knows at the spec's resolution: counts, per-stage kernel/map/coverage, receptive field."""
    compiled = compile_spec(spec)
    graph = compiled.graph
    output = next(node for node in graph if graph.nodes[node]["op"] == "output")
    ratios = [stage["kernel"] / stage["feature_map"] for stage in compiled.stages]
    return {"fingerprint": compiled.fingerprint,
            "params": compiled.totals["params"]["nonzero"],
            "params_dense": compiled.totals["params"]["dense"],
            "macs": compiled.totals["macs"]["at_density"],
            "kernels": [stage["kernel"] for stage in compiled.stages],
            "feature_maps": [stage["feature_map"] for stage in compiled.stages],
            "stage_coverage": [round(ratio, 4) for ratio in ratios],
            "coverage": sum(abs(math.log(ratios[stage - 1])) for stage in coverage_stages) / len(coverage_stages),
            "min_coverage": min(ratios),
            "receptive_field": graph.nodes[output]["meta"]["receptive_field"][0]}


def measure_latency(model, resolution: int, repeats: int = 5) -> float:
    """Median ms of one forward of ``model`` (batch 1, R x R, eval, no grad) on CUDA when available, else
    the CPU."""
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.eval().to(device)
    image = torch.randn(1, model.in_channels, resolution, resolution, device=device)
    timings = []
    with torch.no_grad():
        model(image)  # warm-up: kernels compiled, caches filled
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(image)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append((time.perf_counter() - started) * 1e3)
    return statistics.median(timings)


def measure_erf_ratio(model, resolution: int, num_images: int = 2) -> float:
    """ERF area ratio of ``model`` at the 20% threshold at R x R (0.0 when no square reaches 20%)."""
    from compiler import erf
    name = model.spec.name
    result = erf.model_erf(model, name, erf.shipped_photos()[:num_images], resolution, name, progress=False)
    found = result.ratios.get("20%")
    return found["ratio"] if found else 0.0


# ---------------------------------------------------------------- the study

@dataclass
class SearchConfig:
    """Everything one `pelk search` worker needs."""

    resolution: int
    space: SearchSpace
    base: ModelSpec
    objectives: list[Objective] = field(default_factory=lambda: parse_objectives(None))
    budget: dict[str, float] = field(default_factory=dict)
    trials: int = 200
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "nsga2"
    seed: int | None = None
    heartbeat: int = 10

    def name(self) -> str:
        return self.study_name or f"{self.space.name}-{self.base.name}-r{self.resolution}"

    def identity(self) -> dict:
        """What a resumed study must share with the one it resumes."""
        return {"space": self.space.digest(), "base": compile_spec(self.base).fingerprint,
                "resolution": self.resolution, "objectives": [objective.name for objective in self.objectives],
                "budget": self.budget}


def make_storage(location: str | None, heartbeat: int) -> optuna.storages.BaseStorage:
    """The study storage: in memory (None), a journal file (a path), or an RDB (an SQLAlchemy URL).

    RDB storages run Optuna's heartbeat: a trial whose worker stops beating for ``3 * heartbeat``
    seconds is failed and re-queued once. Journal files (one machine, several processes, file locks)
    have no heartbeat; `fail_orphans` frees a dead local worker's trial there, from process ids.
    """
    if location is None:
        return optuna.storages.InMemoryStorage()
    if "://" not in location:
        _check_journal(Path(location))
    try:
        if "://" not in location:
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(location)))
        return _rdb_storage(location, heartbeat)
    except Exception as error:  # SQLAlchemy / driver / file errors: bad URL, server down, missing driver
        first_line = (str(error).splitlines() or [""])[0]
        raise SearchError(f"--storage {_redact(location)}: cannot open the study storage "
                          f"({type(error).__name__}: {first_line})") from None


def _check_journal(path: Path) -> None:
    """A journal path must be new, empty or an Optuna journal: never append a study to another kind of file."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as file:
        first_line = file.readline(1 << 16)  # a journal starts with a short create-study record
    try:
        record = json.loads(first_line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise SearchError(f"--storage {path}: exists and is not an Optuna journal file (left untouched); "
                          f"pass a new path or an SQLAlchemy URL")


def _rdb_storage(url: str, heartbeat: int, attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeat; retried when workers starting together race to create Optuna's tables."""
    import sqlalchemy.exc

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9; relied on knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))

    for attempt in range(1, attempts):
        try:
            return connect()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.2 * attempt)
    return connect()


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def fail_orphans(study: optuna.Study) -> list[int]:
    """Journal storage: fail the RUNNING trials whose worker process (on this machine) is gone.

    A trial records its worker as ``host:pid``. Failing is idempotent, so workers starting together
    may all do it; a failed trial no longer claims its architecture, which later trials may sample.
    """
    failed, host = [], socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).partition(":")
        if worker_host == host and pid.isdigit() and not _process_alive(int(pid)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            failed.append(trial.number)
    return failed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_sampler(kind: str, seed: int | None, population: int) -> optuna.samplers.BaseSampler:
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"--sampler: unknown sampler {kind!r} (nsga2, tpe, random)")


def open_study(config: SearchConfig) -> optuna.Study:
    """Create the study, or load it when it exists and was made for the same search."""
    storage = make_storage(config.storage, config.heartbeat)
    population = max(4, min(50, config.trials // 4))
    study = optuna.create_study(storage=storage, study_name=config.name(), load_if_exists=True,
                                directions=[objective.direction for objective in config.objectives],
                                sampler=make_sampler(config.sampler, config.seed, population))
    identity = config.identity()
    stored = study.user_attrs.get("pelk")
    if stored is None:
        study.set_user_attr("pelk", identity)
        study.set_user_attr("space_yaml", config.space.model_dump(mode="json"))
    elif stored != identity:
        changed = [key for key in identity if stored.get(key) != identity[key]]
        raise SearchError(f"study {config.name()!r} in this storage was made for another search "
                          f"(different {', '.join(changed)}); pass --study NAME to start a new one")
    return study


def _objective_function(config: SearchConfig, study: optuna.Study) -> Callable[[optuna.Trial], tuple]:
    base_count = len(config.base.stages)

    def objective(trial: optuna.Trial) -> tuple:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        choices = sample_choices(trial, config.space, base_count)
        trial.set_user_attr("choices", choices)
        try:
            spec = apply_choices(config.base, choices, config.resolution, f"{config.base.name}_t{trial.number}")
        except ValidationError as error:
            problem = validation_message(error)
            trial.set_user_attr("invalid", problem)
            raise optuna.TrialPruned(f"invalid spec: {problem}") from None
        metrics = ir_metrics(spec, config.space.coverage_stages)
        trial.set_user_attr("fingerprint", metrics["fingerprint"])
        for key, limit in config.budget.items():
            trial.set_constraint(key, metrics[key] / limit - 1.0)
        duplicate = _earlier_twin(study, trial.number, metrics["fingerprint"])
        if duplicate is not None:
            trial.set_user_attr("duplicate_of", duplicate)
            raise optuna.TrialPruned(f"architecture {metrics['fingerprint']} is trial {duplicate}'s")
        if any(objective.builds_model for objective in config.objectives):
            model = build_model(spec)  # fresh weights, one model for every slow objective
            names = {objective.name for objective in config.objectives}
            if "latency" in names:
                metrics["latency"] = measure_latency(model, config.resolution)
            if "erf" in names:
                metrics["erf"] = measure_erf_ratio(model, config.resolution)
        trial.set_user_attr("metrics", metrics)
        return tuple(metrics[objective.name] for objective in config.objectives)

    return objective


def _earlier_twin(study: optuna.Study, number: int, fingerprint: str) -> int | None:
    """Number of another RUNNING or COMPLETE trial with this fingerprint (the trial's own attr is written first)."""
    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
    for other in study.get_trials(deepcopy=False, states=states):
        if other.number != number and other.user_attrs.get("fingerprint") == fingerprint:
            return other.number
    return None


@dataclass
class SearchResult:
    study: optuna.Study
    config: SearchConfig
    front: list[dict]
    counts: dict[str, int]
    seconds: float


def run_search(config: SearchConfig, progress: Callable[[str], None] | None = None) -> SearchResult:
    """Run ``config.trials`` trials on the (possibly shared, possibly resumed) study; return its Pareto front."""
    check_space_fits(config.space, config.base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config)
    if config.storage is not None and "://" not in config.storage:  # a journal file
        fail_orphans(study)
    started = time.perf_counter()
    study.optimize(_objective_function(config, study), n_trials=config.trials, gc_after_trial=False)
    return SearchResult(study, config, pareto_front(study, config), trial_counts(study),
                        time.perf_counter() - started)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def pareto_front(study: optuna.Study, config: SearchConfig) -> list[dict]:
    """The feasible non-dominated COMPLETE trials, as rows sorted by the first objective."""
    rows = []
    for trial in study.best_trials:
        metrics = trial.user_attrs["metrics"]
        rows.append({"trial": trial.number, "name": f"{config.space.name}_r{config.resolution}_t{trial.number}",
                     "fingerprint": metrics["fingerprint"], "choices": trial.user_attrs["choices"],
                     "objectives": {objective.name: value for objective, value in zip(config.objectives,
                                                                                       trial.values)},
                     **{key: metrics[key] for key in ("params", "params_dense", "macs", "kernels", "feature_maps",
                                                      "stage_coverage", "coverage", "min_coverage",
                                                      "receptive_field")}})
    first = config.objectives[0]
    return sorted(rows, key=lambda row: row["objectives"][first.name] * (1 if first.direction == "minimize" else -1))


def front_spec(config: SearchConfig, row: dict) -> ModelSpec:
    """The spec of one front member, rebuilt from its recorded choices."""
    spec = apply_choices(config.base, row["choices"], config.resolution, row["name"])
    spec.description = (f"pelk search: space {config.space.name}, base {config.base.name}, resolution "
                        f"{config.resolution}, trial {row['trial']}, kernels {'-'.join(map(str, row['kernels']))}")
    return spec


def front_document(result: SearchResult) -> dict:
    """The JSON report: the search's settings, trial counts and the front."""
    config = result.config
    return {"study": config.name(), "space": config.space.name, "base": config.base.name,
            "resolution": config.resolution,
            "objectives": [{"name": objective.name, "direction": objective.direction,
                            "description": objective.description} for objective in config.objectives],
            "budget": config.budget, "trials": result.counts, "seconds": round(result.seconds, 3),
            "front": result.front}


def write_front(result: SearchResult, out_dir: str | Path) -> list[Path]:
    """``front.json`` and ``front/NAME.yaml`` (one validated spec per front member), each written atomically."""
    out_dir = Path(out_dir)
    paths = []
    with atomic_directory(out_dir / "front") as temp:
        for row in result.front:
            spec = front_spec(result.config, row)
            save_spec(spec, temp / f"{row['name']}.yaml")
            row["spec"] = str(out_dir / "front" / f"{row['name']}.yaml")
            paths.append(Path(row["spec"]))
    atomic_write_text(out_dir / "front.json", json.dumps(front_document(result), indent=2) + "\n")
    return [out_dir / "front.json", *paths]


def default_storage(out_dir: str | Path | None) -> str | None:
    """A journal file under the output folder (no server, several local processes), else in memory."""
    return None if out_dir is None else str(Path(out_dir) / "study.journal")


def make_config(resolution: int, base: str | None = None, space: str | None = None, budget: str | None = None,
                objectives: str | None = None, **options: Any) -> SearchConfig:
    """A SearchConfig from CLI-style arguments; the space defaults to the shipped ``pelk_t_kernels``."""
    search_space = resolve_space(space or "pelk_t_kernels")
    base_spec = resolve_spec(base or search_space.base)
    return SearchConfig(resolution=resolution, space=search_space, base=base_spec,
                        objectives=parse_objectives(objectives), budget=parse_budget(budget), **options)


def empty_front_reason(result: SearchResult) -> str | None:
    """Why the front is empty (no complete trial, or the budget excludes them all), or None when it is not."""
    if result.front:
        return None
    complete = result.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return "no trial completed (every one was a duplicate or an invalid spec; widen the space)"
    smallest = {key: min(trial.user_attrs["metrics"][key] for trial in complete) for key in result.config.budget}
    from compiler.passes import human
    return ("no complete trial meets the budget " + ", ".join(
        f"{key}<={human(limit)} (smallest seen {human(smallest[key])})" for key, limit in result.config.budget.items()))


def front_table(result: SearchResult) -> tuple[list[dict], list[tuple[str, str]]]:
    """The front as printable rows and their (key, header) columns."""
    from compiler.passes import human
    rows = []
    for row in result.front:
        choices = row["choices"]
        printed = {"trial": row["trial"], "kernels": "-".join(map(str, row["kernels"])),
                   "center": "/".join(str(c) for c in choices["centers"]) if any(choices["centers"]) else "-",
                   "m": choices["base_m"] or "-", "ratio": choices["partial_ratio"] or "-",
                   "width": choices["width_factor"] or "-", "params": human(row["params"]),
                   "macs": human(row["macs"]), "K/H": " ".join(f"{value:.2f}" for value in row["stage_coverage"]),
                   "rf": row["receptive_field"]}
        for name, value in row["objectives"].items():
            if name not in printed:
                printed[name] = f"{value:.4g}"
        rows.append(printed)
    keys = list(rows[0]) if rows else ["trial", "kernels", "params", "macs"]
    return rows, [(key, key) for key in keys]
