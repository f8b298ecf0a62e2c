"""A corpus of bad job specs, each with the words its one-line error must hold.

Every case is a change to :data:`BASE` (a valid spec): ``set`` puts a YAML fragment under a dotted section,
``text`` replaces the whole file. ``hpcvit validate`` must refuse each with exit code 2 and one line naming the
file (and, where the value is in the file, its line and field).
"""

from __future__ import annotations

BASE = """name: fuzz
model:
  name: cnn_small
optim:
  lr: 1e-3
  epochs: 2
"""

# (id, spec text, words the error must contain)
CASES: list[tuple[str, str, str]] = []


def _add(case_id: str, text: str, words: str) -> None:
    CASES.append((case_id, text, words))


def _with(section: str, fragment: str, words: str) -> None:
    """BASE plus ``section: {fragment}`` (merged into optim when the section is optim); the id says which."""
    case_id = f"{section or 'top'}: {' '.join(fragment.split())[:60]}"
    if section == "optim":
        text = BASE.split("optim:")[0] + "optim:\n" + "".join(f"  {line}\n" for line in fragment.splitlines())
    elif section == "":
        text = BASE + fragment + "\n"
    else:
        text = BASE + f"{section}:\n" + "".join(f"  {line}\n" for line in fragment.splitlines())
    _add(case_id, text, words)


# -- the file itself ----------------------------------------------------------------------------------------
_add("empty", "", "the spec is empty")
_add("only-comments", "# nothing\n# here\n", "the spec is empty")
_add("a-list", "- name: x\n- name: y\n", "must be a mapping")
_add("a-scalar", "just text\n", "must be a mapping")
_add("unclosed-flow", "name: x\nmodel: {name: cnn_small\n", "YAML syntax")
_add("unclosed-list", "name: x\nmodel:\n  name: [cnn_small\n", "YAML syntax")
_add("tab-indent", "name: x\nmodel:\n\tname: cnn_small\n", "YAML syntax")
_add("bad-indent", "name: x\nmodel:\n  name: cnn_small\n    kwargs: {}\n", "YAML syntax")
_add("duplicate-key", BASE + "  lr: 2e-3\n", "duplicate key")
_add("duplicate-top", BASE + "name: again\n", "duplicate key")
_add("unknown-alias", "name: x\nmodel: *nothing\n", "YAML syntax")
_add("nul-byte", "name: x\x00y\nmodel: {name: cnn_small}\n", "NUL byte")
_add("alias-bomb", "name: x\nmodel: {name: cnn_small}\na: &a [" + ",".join(["1"] * 9) + "]\n"
     + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)),
     "expands to more than")
_add("too-large", BASE + "description: '" + "x" * (1 << 20) + "'\n", "more than the 1,048,576")
_add("python-tag", BASE + "description: !!python/object/apply:os.system ['true']\n", "YAML tag")
_add("custom-tag", BASE + "description: !secret abc\n", "YAML tag")
_add("key-is-a-list", "name: x\nmodel: {name: cnn_small}\n? [a, b]\n: 1\n", "a key must be a name")

# -- top level ----------------------------------------------------------------------------------------------
_add("no-name", "model: {name: cnn_small}\n", "name: Field required")
_add("no-model", "name: x\n", "model: Field required")
_with("", "modle: {name: cnn_small}", "unknown field")
for bad in ("'with space'", "'../escape'", "''", "'.hidden'", "'a/b'", "'x;rm -rf'", "'" + "n" * 65 + "'",
            "'$(id)'", "'`id`'"):
    _add(f"name {bad[:20]}", BASE.replace("name: fuzz", f"name: {bad}"), "name: String should match pattern")
_with("", "executor: pbs", "'local' or 'slurm'")
_with("", "output_dir: [a, b]", "output_dir: Input should be a valid string")
_with("", "description: [a]", "description: Input should be a valid string")

# -- model ----------------------------------------------------------------------------------------------------
_add("model-unknown", BASE.replace("cnn_small", "resnet999"), "unknown model 'resnet999'")
_add("model-typo", BASE.replace("cnn_small", "cnn_smal"), "did you mean cnn_small")
_add("model-kwargs-list", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: [1]"),
     "model.kwargs: Input should be a valid dictionary")
_add("model-kwargs-unknown", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {widht: 8}"),
     "takes no argument 'widht'")
_add("model-kwargs-reserved", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {in_chans: 3}"),
     "set by hpcvit from the data")
_add("model-kwargs-type", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {width: eight}"),
     "argument 'width' takes int, not 'eight'")
_add("model-kwargs-float-for-int", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {width: 8.5}"),
     "takes int, not 8.5")
_add("model-kwargs-inf", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {dropout: .inf}"),
     "inf is not a finite number")
_add("model-kwargs-nan", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {dropout: .nan}"),
     "nan is not a finite number")

# -- optim ----------------------------------------------------------------------------------------------------
for field, value, words in [
    ("lr", "0", "greater than 0"), ("lr", "-1e-3", "greater than 0"), ("lr", ".inf", "finite number"),
    ("lr", ".nan", "finite number"), ("lr", "fast", "valid number"), ("lr", "[1e-3]", "valid number"),
    ("epochs", "0", "greater than 0"), ("epochs", "-2", "greater than 0"), ("epochs", "1.5", "valid integer"),
    ("epochs", "two", "valid integer"), ("batch_size", "0", "greater than 0"), ("optimizer", "lion", "'adamw'"),
    ("schedule", "linear", "'cosine'"), ("warmup_epochs", "-1", "greater than or equal to 0"),
    ("gamma", "0", "greater than 0"), ("gamma", "2", "less than or equal to 1"),
    ("momentum", "1", "less than 1"), ("label_smoothing", "0.5", "less than 0.5"),
    ("ema_decay", "1", "less than 1"), ("ema_decay", "0", "greater than 0"),
    ("grad_accum_steps", "0", "greater than or equal to 1"), ("max_steps_per_epoch", "0", "greater than 0"),
    ("amp", "fp8", "'auto'"), ("seed", "-1", "greater than or equal to 0"),
    ("seed", "99999999999999999999", "less than 4294967296"), ("seed", "1e23", "valid integer"),
    ("seed", "true", "valid integer"), ("grad_clip", "0", "greater than 0"), ("weight_decay", "-0.1", "greater than"),
    ("nonfinite", "ignore", "'stop' or 'skip_batch'"), ("compile", "yes please", "valid boolean"),
    ("optimiser", "adamw", "unknown field"),
]:
    _with("optim", f"{field}: {value}", words)

# -- checkpoint -----------------------------------------------------------------------------------------------
for fragment, words in [("every_steps: 0", "greater than 0"), ("every_minutes: 0", "greater than 0"),
                        ("keep: 0", "greater than or equal to 1"), ("keep_best: maybe", "valid boolean"),
                        ("every_minutes: .inf", "finite number"), ("keepp: 2", "unknown field")]:
    _with("checkpoint", fragment, words)

# -- resources ------------------------------------------------------------------------------------------------
for fragment, words in [
    ("nodes: 0", "greater than or equal to 1"), ("gpus_per_node: -1", "greater than or equal to 0"),
    ("cpus_per_task: 0", "greater than or equal to 1"), ("mem_gb: 0", "greater than 0"),
    ("time_min: 0", "greater than or equal to 1"), ("partition: 'gpu; rm -rf /'", "not a valid Slurm name"),
    ("account: 'a b'", "not a valid Slurm name"), ("qos: '$(whoami)'", "not a valid Slurm name"),
    ("array_parallelism: 0", "greater than or equal to 1"), ("signal_delay_s: 5", "greater than or equal to 10"),
    ("max_requeues: -1", "greater than or equal to 0"), ("nproc_per_node: 0", "greater than or equal to 1"),
    ("sbatch_extra: {output: /tmp/x}", "not allowed"), ("sbatch_extra: {dependency: 'afterok:1'}", "not allowed"),
    ("sbatch_extra: {comment: \"a\\nb\"}", "unsafe characters"), ("sbatch_extra: [constraint]", "valid dictionary"),
    ("mem_gb: .nan", "finite number"), ("partiton: gpu", "unknown field"),
]:
    _with("resources", fragment, words)

# -- data -----------------------------------------------------------------------------------------------------
for fragment, words in [
    ("format: zarr", "'hdf5', 'parquet' or 'synthetic'"), ("format: hdf5", "needs at least one entry in data.paths"),
    ("paths: a.h5", "valid list"), ("val_fraction: 0", "greater than 0"), ("val_fraction: 1", "less than 1"),
    ("val_fraction: 0.6\ntest_fraction: 0.5", "must leave training samples"), ("test_fraction: -0.1", "greater than"),
    ("channels: []", "distinct, non-negative channel"), ("channels: [-1]", "distinct, non-negative channel"),
    ("channels: [0, 0]", "distinct, non-negative channel"), ("channels: [a]", "valid integer"),
    ("cuts: {'abs(pt': [1, 2]}", "name a column, or abs(column)"), ("cuts: {pt: [1]}", "give [min, max]"),
    ("cuts: {pt: [null, null]}", "at least one bound"), ("cuts: {pt: [5, 1]}", "must be below max"),
    ("cuts: {pt: [1, 2, 3]}", "give [min, max]"), ("cuts: {pt: [a, 2]}", "valid number"),
    ("cuts: {pt: [.nan, 2]}", "finite number"), ("cuts: {'p t': [1, 2]}", "name a column"),
    ("max_samples: 0", "greater than 0"), ("layout: NCWH", "'auto', 'NHWC' or 'NCHW'"),
    ("num_workers: -1", "greater than or equal to 0"), ("split_seed: -1", "greater than or equal to 0"),
    ("hdf5_chunk_cache_mb: 0", "greater than 0"), ("task: multiclass", "'hit_clustering' or 'regression'"),
    ("positive_value: photon", "valid number"), ("preprocessing: {clip_sigma: -5}", "greater than 0"),
    ("preprocessing: {zero_suppress: -1}", "greater than or equal to 0"),
    ("preprocessing: {stats_samples: 0}", "greater than 0"), ("preprocessing: {zscore: sometimes}", "valid boolean"),
    ("synthetic: {n_samples: 1}", "greater than 1"), ("synthetic: {image_size: 4}", "greater than or equal to 8"),
    ("synthetic: {channels: 0}", "greater than or equal to 1"), ("synthetic: {seed: -3}", "greater than or equal"),
    ("input_keys: X", "unknown field"),
]:
    _with("data", fragment, words)

# -- sweep ----------------------------------------------------------------------------------------------------
for fragment, words in [
    ("grid: [optim.lr]", "valid dictionary"), ("grid: {optim.lrr: [0.1]}", "unknown field 'lrr' of optim"),
    ("grid: {optim.lr: []}", "at least one value"), ("grid: {optim.lr: 0.1}", "valid list"),
    ("grid: {name: [a, b]}", "cannot vary within a sweep"), ("grid: {resources.nodes: [1, 2]}", "cannot vary"),
    ("grid: {executor: [local, slurm]}", "cannot vary"), ("grid: {tracking.uri: [a, b]}", "cannot vary"),
    ("grid: {optim: [1]}", "names a whole section"), ("grid: {optim.lr.x: [1]}", "has no sub-fields"),
    ("grid: {optim.lr: [0.1, -1]}", "greater than 0 (run 1: optim.lr=-1)"),
    ("zip: {optim.lr: [0.1, 0.2], optim.seed: [1]}", "equal lengths"),
    ("grid: {optim.lr: [0.1]}\nzip: {optim.lr: [0.2]}", "both grid and zip"),
    ("grid: {optim.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], optim.epochs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n"
     "max_runs: 50", "expands to 100 runs, more than sweep.max_runs = 50"),
    ("grid: {optim.lr: [.inf]}", "inf is not a finite number"), ("max_runs: 0", "greater than or equal to 1"),
    ("gird: {optim.lr: [0.1]}", "unknown field"), ("grid: {data.cuts.pt: [[1, 0]]}", "must be below max"),
]:
    _with("sweep", fragment, words)

# absurd sizes: refused by a bound that says what is allowed
for section, fragment, words in [
    ("optim", "epochs: 1000000000000000000000000000000", "optim.epochs: Input should be less than or equal to 1000000"),
    ("optim", "batch_size: 9223372036854775808", "optim.batch_size: Input should be less than or equal to 1048576"),
    ("optim", "grad_accum_steps: 100000000", "less than or equal to 65536"),
    ("resources", "time_min: 100000000", "resources.time_min: Input should be less than or equal to 527040"),
    ("resources", "signal_delay_s: 70000", "less than or equal to 65535"),
    ("resources", "cpus_per_task: 10000000", "less than or equal to 100000"),
    ("checkpoint", "keep: 1000000", "less than or equal to 10000"),
    ("data", "num_workers: 100000", "less than or equal to 1024"),
    ("data", "synthetic: {n_samples: 10000000000}", "less than or equal to 100000000"),
]:
    _with(section, fragment, words)

# fields that contradict each other or the executor, pointed at the field
for section, fragment, words in [
    ("resources", "nodes: 2", "resources.nodes: 2 nodes need executor: slurm"),
    ("resources", "time_min: 1\nsignal_delay_s: 60", "resources.signal_delay_s: 60 s is not shorter than time_min"),
    ("data", "channels: [5]", "data.channels: channel 5 does not exist; the synthetic images have 2"),
    ("data", "synthetic: {channels: 3}\nchannels: [0, 3]", "channel 3 does not exist"),
    ("data", "format: hdf5\npaths: [a.h5, ./a.h5]", "data.paths: './a.h5' is listed twice"),
    ("data", "format: hdf5\npaths: [a.h5, b/../a.h5]", "is listed twice"),
    ("checkpoint", "best_metric: val_mae", "checkpoint.best_metric: val_mae does not apply to a binary task"),
]:
    _with(section, fragment, words)

_add("nested 40 levels", BASE + "description: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels")
_add("nested 5000 levels", BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to read")

# model sizes that no model can be built with
_add("model-kwargs-negative", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {width: -8}"),
     "model.kwargs: model 'cnn_small' argument 'width' is -8: sizes, counts and rates are not negative")
_add("model-kwargs-zero", BASE.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {width: 0}"),
     "argument 'width' is 0: it must be at least 1 (default 32)")
