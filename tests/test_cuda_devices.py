"""Which GPU and which recipe (issue 12 items 2 and 3, MIG facts of item 4, named cards of item 6), on the CPU with a
fake `pynvml` (tests/fake_gpu.py) and, where needed, a faked `torch.cuda` capability."""

import json
import sys

import pytest
from fake_gpu import MIB, FakeDevice, fake_pynvml

from gpt.config import resolve_recipe
from gpt.errors import ConfigError
from vramfit.cards import CARDS, parse_vram
from vramfit.errors import VramfitError
from vramfit.measure import devices
from vramfit.measure.devices import DeviceFacts
from vramfit.measure.probe import NvmlProbe
from vramfit.recipe import Recipe
from vramfit.sweep.grid import Measure, load_grid
from vramfit.sweep.pool import worker_env


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml over the given devices; CUDA_VISIBLE_DEVICES starts unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(gpus, **kw):
        mod = fake_pynvml(gpus, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod
    return install


FOUR = [FakeDevice(f"GPU-{c * 8}", name=f"Card {c}") for c in "abcd"]


# ------------------------------------------------------------------------------------------ item 2: compile


@pytest.mark.parametrize("cap, want", [((6, 1), ("float16", False)), ((7, 0), ("float16", True)),
                                       ((7, 5), ("float16", True)), ((8, 0), ("bfloat16", True)),
                                       ((9, 0), ("bfloat16", True))])
def test_compile_and_dtype_resolve_from_the_capability(cap, want):
    """torch/_inductor/scheduler.py raises GPUTooOldForTriton when `get_device_properties(device).major < 7`
    (torch/_inductor/exc.py: "Triton only supports devices of CUDA Capability >= 7.0"): compile is off below 7.0,
    so a P100/P40/GTX 10xx sweep does not turn every point into an error; bf16 needs 8.0."""
    assert resolve_recipe("auto", None, "auto", "cuda", cap)[:2] == want
    facts = DeviceFacts("cuda", "some GPU", 16 * 2**30, compute_capability=f"{cap[0]}.{cap[1]}")
    r = facts.resolve(Recipe())
    assert (r.dtype, r.compile) == want
    assert resolve_recipe("auto", None, "auto", "cpu", None)[:2] == ("float32", False)


def test_explicit_compile_on_a_gpu_too_old_for_triton_is_refused_in_one_line():
    """Asking for compile on sm 6.x would fail in every step with GPUTooOldForTriton (torch/_inductor/exc.py):
    refuse it once, at resolution."""
    with pytest.raises(ConfigError, match="capability >= 7.0"):
        resolve_recipe("auto", True, "auto", "cuda", (6, 0))
    assert resolve_recipe("auto", False, "auto", "cuda", (6, 0))[1] is False


def test_trainer_resolves_compile_from_the_real_device(monkeypatch):
    """gpt.train.resolve_for_device asks torch.cuda.get_device_capability of the device it trains on (faked here as
    a P100's 6.0) and the Trainer keeps the decision in `trainer.compile`."""
    import torch

    from gpt.config import make_config
    from gpt.train import Trainer, resolve_for_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    cfg = make_config({"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, "vocab_size": 16})
    assert resolve_for_device(cfg, "cuda:0") == ("float16", False, "fused")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_for_device(cfg, "cuda:0") == ("bfloat16", True, "fused")
    trainer = Trainer(cfg, cfg.model_config(), "cpu")
    assert trainer.compile is False and trainer.dtype == "float32"


ECHO = ("import json, sys; spec = json.loads(sys.stdin.read()); "
        "print(json.dumps({**spec['point'], 'status': 'ok', 'compile': spec['recipe']['compile'], "
        "'dtype': spec['recipe']['dtype']}))")


def test_the_sweep_records_and_sends_the_resolved_compile(tmp_path, monkeypatch):
    """On a (faked) sm 6.0 GPU the stored recipe and the worker's spec both say compile false, dtype float16: the
    value resolved against Inductor's capability check (torch/_inductor/scheduler.py, GPUTooOldForTriton) is the
    one recorded and run."""
    import vramfit.sweep.session as session
    from vramfit.store import Store
    from vramfit.sweep.session import SweepOptions, run_sweep
    from vramfit.sweep.whole_grid import GridChooser

    p100 = DeviceFacts("cuda", "Tesla P100-PCIE-16GB", 16 * 2**30, index=0, gpu_uuid="GPU-p100",
                       compute_capability="6.0", torch_version="x")
    monkeypatch.setattr(session, "resolve", lambda device, indices: [p100])
    grid = load_grid(None, {"n_layer": [1], "n_head": [1], "n_embd": [8], "block_size": [8], "vocab_size": [8],
                            "batch_size": [1, 2]})
    db = tmp_path / "db.sqlite"
    run_sweep(grid, SweepOptions(db, device="cuda", quiet=True, worker_cmd=[sys.executable, "-c", ECHO]), GridChooser())
    with Store(db) as s:
        recipes = {r[0] for r in s.conn.execute("SELECT recipe_json FROM environments")}
        extras = [json.loads(r[0]) for r in s.conn.execute("SELECT extra FROM points")]
    assert [json.loads(r)["compile"] for r in recipes] == [False]
    assert all(e["compile"] is False and e["dtype"] == "float16" for e in extras)


# ------------------------------------------------------------------------------------------ item 3: which GPU


def test_inherited_cuda_visible_devices_limits_the_gpus(nvml, monkeypatch):
    """A Slurm job / container with CUDA_VISIBLE_DEVICES=2,0 may only use those two GPUs: NVML lists all four (its
    enumeration ignores CUDA_VISIBLE_DEVICES), so vramfit intersects, keeping CUDA's order and ordinals."""
    nvml(FOUR)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    gpus, note = devices.nvml_devices()
    assert note == ""
    assert [(g.gpu_uuid, g.index, g.nvml_index) for g in gpus] == [("GPU-cccccccc", 0, 2), ("GPU-aaaaaaaa", 1, 0)]
    assert devices.resolve("cuda:0")[0].gpu_uuid == "GPU-cccccccc"  # the job's first GPU, not NVML's
    assert [d.gpu_uuid for d in devices.resolve("cuda", [1])] == ["GPU-aaaaaaaa"]
    with pytest.raises(VramfitError, match="no GPU with index 2"):
        devices.resolve("cuda", [2])


@pytest.mark.parametrize("cvd, want", [(None, "abcd"), ("", ""), ("-1", ""), ("3", "d"), ("GPU-bbb", "b"),
                                       ("GPU-dddddddd,1", "db"), ("1,nonsense,2", "b"), ("1,1", "b"),
                                       ("GPU-", "")])
def test_visible_devices_parses_like_cuda(nvml, cvd, want):
    """CUDA_VISIBLE_DEVICES semantics (CUDA C++ Programming Guide, "CUDA Environment Variables"): ordinals or
    (unique prefixes of) UUIDs; the list ends at the first entry that names no device or repeats one; '' or '-1'
    hides every GPU. NVML's index (pynvml nvmlDeviceGetHandleByIndex) is PCI bus order, hence CUDA_DEVICE_ORDER=
    PCI_BUS_ID wherever the two meet."""
    nvml(FOUR)
    gpus, _ = devices.all_nvml_devices()
    got = devices.visible_devices(gpus, cvd)
    assert "".join(g.device_name[-1] for g in got) == want
    assert [g.index for g in got] == list(range(len(want)))


def test_worker_env_pins_the_gpu_by_uuid_in_pci_order(nvml, monkeypatch):
    """The worker gets CUDA_VISIBLE_DEVICES=<UUID> of a GPU inside the inherited set, and CUDA_DEVICE_ORDER=
    PCI_BUS_ID so that any CUDA ordinal means NVML's (the CUDA default is FASTEST_FIRST)."""
    nvml(FOUR)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    (d,) = devices.resolve("cuda")
    env = worker_env(d, Recipe().resolved("cuda", (8, 0)), Measure())
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-dddddddd" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_ray_task_finds_its_gpu_by_pci_order_and_uuid(nvml, monkeypatch):
    """Ray sets CUDA_VISIBLE_DEVICES to its GPU ids; the task reads them in PCI bus order (NVML's) and hands the
    worker the UUID, so the GPU Ray scheduled is the one measured; inside the task it is CUDA ordinal 0."""
    from vramfit.sweep.executors.ray import _local_facts

    nvml(FOUR)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    f = _local_facts(True)
    assert (f["gpu_uuid"], f["index"], f["nvml_index"]) == ("GPU-bbbbbbbb", 0, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="no GPU visible"):
        _local_facts(True)


# ------------------------------------------------------------------------------------------ item 4: MIG


def test_mig_instances_are_the_devices_with_their_own_memory(nvml, monkeypatch):
    """A GPU in MIG mode (nvmlDeviceGetMigMode current == NVML_DEVICE_MIG_ENABLE) is listed as its MIG instances
    (nvmlDeviceGetMaxMigDeviceCount + nvmlDeviceGetMigDeviceHandleByIndex, NVMLError_NotFound for empty slots),
    each with the instance's memory and UUID, not the parent's 80 GB; the probe opens an instance by its MIG UUID
    even where nvmlDeviceGetHandleByUUID only knows GPU UUIDs."""
    migs = [FakeDevice(f"MIG-{c * 8}", name="NVIDIA A100-SXM4-80GB MIG 1g.10gb", total=9984 * MIB, idle=13 * MIB)
            for c in "xy"]
    parent = FakeDevice("GPU-parent", name="NVIDIA A100-SXM4-80GB", total=81920 * MIB, migs=migs)
    nvml([parent, FakeDevice("GPU-plain")])
    gpus, _ = devices.nvml_devices()
    assert [(g.gpu_uuid, g.total_memory_bytes, g.mig_parent_uuid) for g in gpus] == [
        ("MIG-xxxxxxxx", 9984 * MIB, "GPU-parent"), ("MIG-yyyyyyyy", 9984 * MIB, "GPU-parent"),
        ("GPU-plain", 40960 * MIB, None)]
    assert gpus[1].device_name.endswith("MIG 1g.10gb") and gpus[1].compute_capability == "8.0"
    nv = NvmlProbe("MIG-yyyyyyyy")
    assert nv.ok and nv.device_total() == 9984 * MIB and nv.device_used() == 13 * MIB
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-yyyyyyyy")
    assert [g.gpu_uuid for g in devices.nvml_devices()[0]] == ["MIG-yyyyyyyy"]
    # torch names a MIG instance 'GPU-<uuid>': the facts are found all the same
    assert devices.facts_for_uuid("GPU-yyyyyyyy").total_memory_bytes == 9984 * MIB


def test_one_mig_gpu_without_permission_leaves_the_later_gpus_listed(nvml):
    """nvidia-ml-py raises NVMLError_NoPermission from nvmlDeviceGetMemoryInfo on a MIG instance without privileges
    (pynvml.py: _nvmlCheckReturn turns NVML_ERROR_NO_PERMISSION into it): that GPU is left out, with a note, and
    the GPUs after it are still listed (the whole loop used to end at the first error)."""
    migs = [FakeDevice("MIG-xxxxxxxx", name="NVIDIA A100-SXM4-80GB MIG 1g.10gb", total=9984 * MIB)]
    parent = FakeDevice("GPU-parent", name="NVIDIA A100-SXM4-80GB", total=81920 * MIB, migs=migs)
    mod = nvml([parent, FakeDevice("GPU-plain"), FakeDevice("GPU-last")])
    real = mod.nvmlDeviceGetMemoryInfo

    def memory(h, version=None):
        if h.uuid.startswith("MIG-"):
            raise mod.NVMLError_NoPermission("Insufficient Permissions")
        return real(h, version)

    mod.nvmlDeviceGetMemoryInfo = memory
    gpus, note = devices.nvml_devices()
    assert [g.gpu_uuid for g in gpus] == ["GPU-plain", "GPU-last"]
    assert "GPU 0" in note and "NVMLError_NoPermission" in note


def test_a_cpu_worker_sees_no_gpu_and_a_gpu_worker_gets_both_allocator_variables(nvml, monkeypatch):
    """A CPU point on a GPU host: Dynamo/Inductor would initialise CUDA in the worker, so it sees none. A CUDA
    point: torch reads PYTORCH_ALLOC_CONF before PYTORCH_CUDA_ALLOC_CONF (c10/core/AllocatorConfig.cpp), so the
    recipe's settings go into both and an inherited value of either is removed; the worker records the one in force."""
    from vramfit.recipe import alloc_conf_in_force

    nvml(FOUR)
    cpu = devices.resolve("cpu")[0]
    assert worker_env(cpu, Recipe().resolved("cpu"), Measure())["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    (d,) = devices.resolve("cuda")[:1]
    env = worker_env(d, Recipe(alloc_conf="garbage_collection_threshold:0.6").resolved("cuda", (8, 0)), Measure())
    assert env["PYTORCH_ALLOC_CONF"] == env["PYTORCH_CUDA_ALLOC_CONF"] == "garbage_collection_threshold:0.6"
    plain = worker_env(d, Recipe().resolved("cuda", (8, 0)), Measure())
    assert "PYTORCH_ALLOC_CONF" not in plain and "PYTORCH_CUDA_ALLOC_CONF" not in plain
    assert alloc_conf_in_force({"PYTORCH_ALLOC_CONF": "a:1", "PYTORCH_CUDA_ALLOC_CONF": "b:2"}) == "a:1"
    assert alloc_conf_in_force({"PYTORCH_CUDA_ALLOC_CONF": "b:2"}) == "b:2" and alloc_conf_in_force({}) == ""
    # the train command a suggestion prints sets both too, so an exported PYTORCH_ALLOC_CONF cannot override it
    from vramfit.plan.suggest import Suggestion
    from vramfit.plan.workflows import train_command

    s = Suggestion(1, 2, 2, 64, 64, 4, 256, 10**5, 256, 2**20, 2**18, 2**20, "backward")
    cmd = train_command(s, {"alloc_conf": "expandable_segments:True"})
    assert cmd.startswith("PYTORCH_ALLOC_CONF=expandable_segments:True "
                          "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True vramfit train ")


# ------------------------------------------------------------------------------------------ item 6: named cards


def test_named_cards_carry_the_total_nvml_reports():
    """`--vram t4` is what nvidia-smi reports for a T4 (15360 MiB with ECC, modal-labs/modal-client#2797), not 16 GiB;
    every card cites where its number comes from; sizes still parse; anything else is one clear error."""
    assert parse_vram("t4") == (15360 * MIB, CARDS["t4"])
    assert parse_vram("A100-40G")[0] == 40960 * MIB and parse_vram("h100_80g")[0] == 81559 * MIB
    assert parse_vram("8G") == (8 * 2**30, None)
    assert all("https://" in c.source and c.total_bytes % MIB == 0 for c in CARDS.values())
    for bad in ("rtx9999", "0", "-1G"):
        with pytest.raises(VramfitError):
            parse_vram(bad)


def test_suggest_takes_a_card_name_and_says_which(tmp_path, capsys):
    """`suggest --vram t4` plans for the T4's NVML total (modal-labs/modal-client#2797: 15360 MiB) and says so in
    the text and in the JSON (`card`)."""
    from planner_data import synthetic_points

    from vramfit.cli import main
    from vramfit.fit.memmodel import fit_points

    model = fit_points(synthetic_points(), target="nvml").save(tmp_path / "m.json")
    args = ["suggest", "--model", str(model), "--top", "2", "--save", str(tmp_path / "s.json")]
    assert main([*args, "--vram", "t4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["card"] == "t4" and doc["vram_bytes"] == 15360 * MIB
    assert main([*args, "--vram", "t4"]) == 0
    assert "t4 = Tesla T4" in capsys.readouterr().out
    assert main([*args, "--vram", "gtx9"]) == 2
    assert "or a card (t4, " in capsys.readouterr().err
