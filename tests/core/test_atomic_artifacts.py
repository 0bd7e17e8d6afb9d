"""An adapter directory is saved as a unit: a failure or a kill at any step leaves the old pair or
the new pair, never a mix; a mixed pair made by hand is caught by the weights hash; files honour
the umask; leftovers of a crash are ignored and cleaned; a full disk is a clear error."""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess

import pytest
import torch

from nemo_peft.core import adapter_io
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.conftest import make_model

CONFIG, WEIGHTS = adapter_io.CONFIG_NAME, adapter_io.WEIGHTS_NAME


def lora_model(dim, alpha, seed):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=dim, alpha=alpha))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    return model


def assert_holds(path, model):
    """``path`` loads into a fresh model with exactly ``model``'s adapter."""
    fresh = make_model("llama")
    fresh.load_adapters(path)
    want, got = model.adapter_state_dict(), fresh.adapter_state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert fresh._adapter_configs["default"][0].to_dict() == model._adapter_configs["default"][0].to_dict()


def leftovers(parent):
    return sorted(e for e in os.listdir(parent) if e.startswith("."))


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def old_and_new(tmp_path):
    """A saved dim-8 adapter at tmp/ad and an unsaved dim-16 one (another alpha) to save over it."""
    old, new = lora_model(8, 16, seed=1), lora_model(16, 32, seed=2)
    path = str(tmp_path / "ad")
    old.save_adapters(path)
    return old, new, path


def test_config_records_weights_hash(old_and_new):
    _, _, path = old_and_new
    meta = json.load(open(os.path.join(path, CONFIG)))
    weights = open(os.path.join(path, WEIGHTS), "rb").read()  # the file's bytes, hashed independently
    assert meta[adapter_io.HASH_KEY] == hashlib.sha256(weights).hexdigest()


def test_second_file_failing_keeps_the_old_pair(old_and_new, monkeypatch):
    old, new, path = old_and_new

    def broken(obj, f, **kw):
        f.write('{"format": "nemo_p')
        raise RuntimeError("killed while writing the config")
    monkeypatch.setattr(adapter_io.json, "dump", broken)
    with pytest.raises(RuntimeError, match="killed"):
        new.save_adapters(path)
    monkeypatch.undo()
    assert_holds(path, old)
    assert leftovers(os.path.dirname(path)) == []


@pytest.mark.parametrize("fail_at", [1, 2])
def test_rename_failing_at_each_step_keeps_the_old_pair(old_and_new, monkeypatch, fail_at):
    old, new, path = old_and_new
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == fail_at:
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="I/O error"):
        new.save_adapters(path)
    monkeypatch.undo()
    assert_holds(path, old)
    assert leftovers(os.path.dirname(path)) == []
    new.save_adapters(path)  # and the next save works
    assert_holds(path, new)


KILL_POINTS = ["weights written", "config written", "rename old aside", "rename new in", "drop old"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_each_step_never_leaves_a_mixed_pair(old_and_new, point):
    old, new, path = old_and_new
    configs = {"default": [c.to_dict() for c in new._adapter_configs["default"]]}
    tensors = new.adapter_state_dict()
    pid = os.fork()
    if pid == 0:  # the child saves and SIGKILLs itself at ``point``
        try:
            def die(*a, **k):
                os.kill(os.getpid(), signal.SIGKILL)
            real_save, real_dump, real_rename, renames = adapter_io.save_file, json.dump, os.rename, []
            if point == "weights written":
                adapter_io.save_file = lambda t, f: (real_save(t, f), die())
            if point == "config written":
                json.dump = lambda obj, f, **kw: (real_dump(obj, f, **kw), f.flush(), die())

            def rename(src, dst):
                renames.append(src)
                if (point, len(renames)) in (("rename old aside", 1), ("rename new in", 2)):
                    die()
                return real_rename(src, dst)
            os.rename = rename
            if point == "drop old":
                shutil.rmtree = die
            adapter_io.save(path, configs, tensors)
        finally:
            os._exit(3)  # not killed: the test fails below
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    expected = new if point == "drop old" else old
    if point == "rename new in":  # the old adapter is set aside: loaders still find it
        assert not os.path.exists(path) and adapter_io.exists(path)
        with pytest.warns(UserWarning, match="interrupted save"):
            assert_holds(path, old)
    else:
        assert_holds(path, expected)
    third = lora_model(4, 8, seed=3)
    third.save_adapters(path)  # cleans the dead run's leftovers (or restores the old pair first)
    assert_holds(path, third)
    assert leftovers(os.path.dirname(path)) == []


def test_mixed_pair_is_caught_by_the_hash(tmp_path):
    a, b = lora_model(2, 4, seed=1), lora_model(2, 8, seed=2)  # same shapes: only the hash tells
    a.save_adapters(str(tmp_path / "a"))
    b.save_adapters(str(tmp_path / "b"))
    shutil.copy(tmp_path / "b" / WEIGHTS, tmp_path / "a" / WEIGHTS)
    with pytest.raises(ValueError, match=r"does not belong to .*adapter_config.json.*different saves.*"
                                         r"--from-checkpoint"):
        make_model("llama").load_adapters(str(tmp_path / "a"))


def test_old_adapter_without_hash_still_loads(old_and_new):
    old, _, path = old_and_new
    meta = json.load(open(os.path.join(path, CONFIG)))
    del meta[adapter_io.HASH_KEY]
    json.dump(meta, open(os.path.join(path, CONFIG), "w"))
    assert_holds(path, old)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)])
def test_files_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        lora_model(2, 4, seed=1).save_adapters(str(tmp_path / "ad"))
        adapter_io.atomic_write(str(tmp_path / "single.txt"), lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(previous)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "ad" / WEIGHTS) == mode(tmp_path / "ad" / CONFIG) == file_mode
    assert mode(tmp_path / "ad") == dir_mode
    assert mode(tmp_path / "single.txt") == file_mode


def test_atomic_write_keeps_a_replaced_files_mode(tmp_path):
    path = tmp_path / "secret.json"
    path.write_text("{}")
    os.chmod(path, 0o600)
    adapter_io.atomic_write(str(path), lambda tmp: open(tmp, "w").write('{"a": 1}'))
    assert path.read_text() == '{"a": 1}' and os.stat(path).st_mode & 0o777 == 0o600


def test_stray_temp_files_are_ignored_and_cleaned(old_and_new):
    old, new, path = old_and_new
    parent, dead = os.path.dirname(path), dead_pid()
    os.makedirs(os.path.join(parent, f".ad.tmp-{dead}-x1"))
    open(os.path.join(parent, f".ad.tmp-{dead}-x1", WEIGHTS), "wb").write(b"half")
    os.makedirs(os.path.join(parent, f".ad.old-{dead}-x2"))
    open(os.path.join(path, f".tmp-{dead}-x3{WEIGHTS}"), "wb").write(b"half")  # a single-file leftover
    open(os.path.join(parent, f".tmp-{dead}-x4last.ckpt"), "wb").write(b"half")
    live = os.path.join(parent, f".ad.tmp-{os.getpid()}-x5")  # a running save's temp dir is left alone
    os.makedirs(live)
    assert_holds(path, old)  # loaders ignore them
    new.save_adapters(path)
    assert_holds(path, new)
    assert leftovers(parent) == sorted([f".tmp-{dead}-x4last.ckpt", os.path.basename(live)])
    assert not [e for e in os.listdir(path) if e.startswith(".tmp-")]
    adapter_io.atomic_write(os.path.join(parent, "last.ckpt"), lambda tmp: open(tmp, "wb").write(b"ckpt"))
    assert leftovers(parent) == [os.path.basename(live)]


def test_other_files_in_the_directory_survive_a_save(old_and_new):
    _, new, path = old_and_new
    open(os.path.join(path, "README.md"), "w").write("notes")
    os.makedirs(os.path.join(path, "sub"))
    open(os.path.join(path, "sub", "x.txt"), "w").write("x")
    new.save_adapters(path)
    assert open(os.path.join(path, "README.md")).read() == "notes"
    assert open(os.path.join(path, "sub", "x.txt")).read() == "x"
    assert_holds(path, new)


@pytest.mark.parametrize("raised", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
    OSError(errno.EACCES, "Permission denied"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
])
def test_full_or_readonly_disk_is_a_clear_error_and_keeps_the_old_adapter(old_and_new, monkeypatch, raised):
    old, new, path = old_and_new

    def writer(tensors, filename):
        open(filename, "wb").write(b"partial")
        raise raised
    monkeypatch.setattr(adapter_io, "save_file", writer)
    with pytest.raises(OSError) as info:
        new.save_adapters(path)
    monkeypatch.undo()
    message = str(info.value)
    assert info.value.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES)
    assert path in message and "adapter" in message and "unchanged" in message
    assert "exp_manager.output_dir" in message and "export.py --from-checkpoint" in message
    assert_holds(path, old)
    assert leftovers(os.path.dirname(path)) == []


def test_checkpoint_write_on_a_full_disk_names_the_file(tmp_path):
    target = str(tmp_path / "checkpoints" / "last.ckpt")

    def torch_save(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    with pytest.raises(OSError, match=r"Could not write last.ckpt to .*last.ckpt.*filesystem is full") as info:
        adapter_io.atomic_write(target, torch_save)
    assert info.value.errno == errno.ENOSPC and os.listdir(tmp_path / "checkpoints") == []


def test_other_errors_pass_through_unchanged(old_and_new, monkeypatch):
    _, new, path = old_and_new
    monkeypatch.setattr(adapter_io, "save_file", lambda t, f: (_ for _ in ()).throw(TypeError("bad tensor")))
    with pytest.raises(TypeError, match="bad tensor"):
        new.save_adapters(path)


def test_saving_over_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "ad").write_text("not a directory")
    with pytest.raises(ValueError, match="is a file; an adapter is saved as a directory"):
        lora_model(2, 4, seed=1).save_adapters(str(tmp_path / "ad"))
    assert (tmp_path / "ad").read_text() == "not a directory"


def test_damaged_config_is_a_clear_error(old_and_new):
    _, _, path = old_and_new
    with open(os.path.join(path, CONFIG), "r+") as f:
        f.truncate(20)
    with pytest.raises(ValueError, match="not valid JSON.*damaged or truncated"):
        make_model("llama").load_adapters(path)
