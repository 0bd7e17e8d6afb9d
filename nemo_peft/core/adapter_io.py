"""The native adapter checkpoint: ``adapter_config.json`` + ``adapter_weights.safetensors``.

An adapter directory is saved as a unit. Both files are written into a temp directory
beside it (``.<name>.tmp-<pid>-*``) and fsynced; then the old directory is renamed to
``.<name>.old-<pid>-*``, the new one to ``<name>``, and the old one deleted. A crash
leaves the old pair or the new pair, never a mix, and the config records the weights'
sha256, checked on load, as a second line of defence. Loaders ignore leftovers of a
crashed save; the next save removes them (or restores the old adapter if the crash fell
between the two renames). Single files (checkpoints, exports) go through ``atomic_write``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as safetensors_bytes

from nemo_peft.core.json_file import read_json_if_exists

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_weights.safetensors"
FORMAT = "nemo_peft"
HASH_KEY = "weights_sha256"
RECOVERY = ("A training run's adapter can be recovered from its last Lightning checkpoint: python "
            "examples/export.py --from-checkpoint <output_dir>/checkpoints/last.ckpt --output <adapter_dir>.")
_REASONS = {errno.ENOSPC: "the filesystem is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}


# ---- small filesystem helpers ----
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """0o666 minus the umask: what open() would give (mkstemp always gives 0o600)."""
    return 0o666 & ~current_umask()


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _leftovers(directory: str, prefix: str) -> list[str]:
    """Entries ``<prefix><pid>-*`` of ``directory`` whose process is gone, oldest first."""
    found = []
    for entry in os.listdir(directory) if os.path.isdir(directory) else []:
        pid = entry[len(prefix):].split("-", 1)[0] if entry.startswith(prefix) else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            found.append(os.path.join(directory, entry))
    return sorted(found, key=os.path.getmtime)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def storage_error(exc: BaseException, path: str, what: str, hint: str = "") -> OSError | None:
    """A clear OSError for a full, read-only or forbidden target, or None for any other failure.
    torch.save hides the errno ("PytorchStreamWriter failed writing file ..."): a full disk is its usual cause."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _REASONS:
        text = str(exc)
        code = next((c for c in _REASONS if os.strerror(c) in text), None)
        if code is None and not isinstance(exc, OSError) and "write failed" in text:
            code = errno.ENOSPC
    if code is None:
        return None
    return OSError(code, f"Could not write {what} to {path!r}: {_REASONS[code]} ({type(exc).__name__}: {exc}). "
                         "What was saved there before is unchanged. Free space (or fix permissions) there, or "
                         f"choose another directory (e.g. exp_manager.output_dir=...). {hint}".rstrip())


# ---- single files ----
def atomic_write(path: str, write, what: str | None = None) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, rename it onto ``path`` and
    fsync the directory: ``path`` holds the old content or the new, never a part. New files get
    the umask's mode, a replaced file keeps its mode."""
    path = os.path.abspath(str(path))
    directory, base = os.path.split(path)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        for stale in _leftovers(directory, ".tmp-"):
            _remove(stale)
        mode = os.stat(path).st_mode & 0o7777 if os.path.isfile(path) else new_file_mode()
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.getpid()}-", suffix=base)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, path)
        tmp = None
        fsync_path(directory)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        err = storage_error(e, path, what or base)
        if err is None:
            raise
        raise err from e


# ---- adapter directories ----
def _backups(path: str) -> list[str]:
    """Old adapter directories set aside by saves of ``path`` (a live one is mid-swap), newest first."""
    parent, base = os.path.split(os.path.abspath(str(path)))
    prefix = f".{base}.old-"
    names = [e for e in os.listdir(parent) if e.startswith(prefix)] if os.path.isdir(parent) else []
    return sorted((os.path.join(parent, e) for e in names), key=os.path.getmtime, reverse=True)


def exists(path: str) -> bool:
    """Whether ``path`` holds an adapter (or an interrupted save set the previous one aside)."""
    path = str(path)
    if os.path.isfile(os.path.join(path, CONFIG_NAME)) or os.path.isfile(os.path.join(path, WEIGHTS_NAME)):
        return True
    return not os.path.lexists(path) and bool(_backups(path))


def _tidy(path: str) -> None:
    """Restore the old adapter if a crash fell between the two renames; remove dead leftovers."""
    parent, base = os.path.split(path)
    stale = _leftovers(parent, f".{base}.old-")
    if stale and not os.path.lexists(path):
        os.rename(stale.pop(), path)  # the newest
    for leftover in stale + _leftovers(parent, f".{base}.tmp-"):
        _remove(leftover)


def _carry_over(old: str, new: str) -> None:
    """Hard-link (copy where links fail) what ``old`` holds besides the adapter into ``new``,
    so replacing the directory never drops the user's other files."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    for entry in os.scandir(old):
        if entry.name in (CONFIG_NAME, WEIGHTS_NAME) or entry.name.startswith(".tmp-"):
            continue
        dst = os.path.join(new, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=link)
        else:
            link(entry.path, dst)
    shutil.copystat(old, new)


def _swap_in(tmp: str, path: str) -> None:
    """Rename ``tmp`` to ``path``; an old ``path`` is set aside first and put back on failure."""
    parent, base = os.path.split(path)
    if not os.path.lexists(path):
        os.rename(tmp, path)
        fsync_path(parent)
        return
    backup = os.path.join(parent, f".{base}.old-" + os.path.basename(tmp)[len(f".{base}.tmp-"):])
    os.rename(path, backup)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(backup, path)
        raise
    fsync_path(parent)
    shutil.rmtree(backup, ignore_errors=True)


def save_file(tensors: dict[str, torch.Tensor], filename: str) -> str:
    """Write ``tensors`` as a safetensors file; returns its sha256 (serialised once in memory, so it is
    hashed without reading the file back)."""
    blob = safetensors_bytes(tensors)
    digest = hashlib.sha256()
    # hashlib and the file write both release the GIL: hash on a second core while writing
    hashing = threading.Thread(target=digest.update, args=(blob,))
    hashing.start()
    with open(filename, "wb") as f:
        f.write(blob)
    hashing.join()
    return digest.hexdigest()


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise ValueError naming ``where`` and the first tensor holding NaN or inf."""
    floats = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    # NaN and inf reach a tensor's sum, so finite sums clear everything in one cheap pass; only a
    # non-finite sum (a bad value, or an overflow of huge ones) needs the per-tensor look
    if not floats or bool(torch.isfinite(torch.stack([t.sum().float().cpu() for t in floats.values()])).all()):
        return
    for name, t in floats.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: adapter tensor {name!r} has {int((~torch.isfinite(t)).sum())} non-finite "
                             f"value(s) (NaN/inf) of {t.numel()}; the training that made it diverged (lower the lr).")


def save(path: str, configs: dict, tensors: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """Write adapter directory ``path`` as a unit (see the module docstring). ``extra`` adds
    top-level fields to adapter_config.json (e.g. each adapter's base fingerprint)."""
    check_finite(tensors, f"Refusing to save the adapter to {str(path)!r} (nothing was written)")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = os.path.realpath(str(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file; an adapter is saved as a directory. Pass a directory path.")
    parent, base = os.path.split(path)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        _tidy(path)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-{os.getpid()}-")
        mode = new_file_mode()
        weights, config = os.path.join(tmp, WEIGHTS_NAME), os.path.join(tmp, CONFIG_NAME)
        digest = save_file(tensors, weights)
        meta = {"format": FORMAT, "version": 1, HASH_KEY: digest, "adapters": configs, **(extra or {})}
        with open(config, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
        for name in (weights, config):
            os.chmod(name, mode)
            fsync_path(name)
        if os.path.isdir(path):
            _carry_over(path, tmp)
        else:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp gives 0o700
        fsync_path(tmp)
        _swap_in(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        err = storage_error(e, path, f"the adapter ({WEIGHTS_NAME} + {CONFIG_NAME})", RECOVERY)
        if err is None:
            raise
        raise err from e


def load(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, tensors) of an adapter directory, checked."""
    directory = os.path.dirname(path) if str(path).endswith(".safetensors") else str(path)
    if not os.path.lexists(directory) and _backups(directory):
        # A save is mid-swap, or crashed between its two renames: the previous adapter is complete.
        warnings.warn(f"{directory!r} is missing; loading the previous adapter an interrupted save set aside "
                      f"in {_backups(directory)[0]!r} (the next save to {directory!r} restores it).")
        directory = path = _backups(directory)[0]
    if os.path.isfile(path) and not str(path).endswith(".safetensors"):
        raise ValueError(f"Adapter path {path!r} is a file; pass the adapter directory that holds {CONFIG_NAME} "
                         f"and {WEIGHTS_NAME} (the directory save_adapters wrote).")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Adapter checkpoint {path!r} does not exist. Pass the directory written by "
            f"save_adapters (it holds {CONFIG_NAME} and {WEIGHTS_NAME})."
        )
    config_path, weights_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    meta = read_config(directory)
    if meta is not None and is_hf_peft_config(meta):
        raise ValueError(f"{config_path!r} is a Hugging Face PEFT adapter (peft_type={meta['peft_type']!r}); load it "
                         "with nemo_peft.load_adapters(model, path), which converts it, or "
                         "nemo_peft.convert.hf_peft.load_hf_peft.")
    if meta is None or not os.path.isfile(weights_path):
        missing = config_path if meta is None else weights_path
        raise FileNotFoundError(f"{missing!r} is missing: {directory!r} is not a complete adapter checkpoint "
                                "written by save_adapters.")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path!r} is not a nemo_peft adapter config (format={meta.get('format')!r}).")
    try:
        with open(weights_path, "rb") as f:
            data = f.read()
        tensors = load_bytes(data)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"Cannot read {weights_path!r} ({e}); the file is damaged or truncated — "
                         "save the adapter again.") from None
    expected, actual = meta.get(HASH_KEY), hashlib.sha256(data).hexdigest()
    if expected is not None and expected != actual:
        raise ValueError(f"{weights_path!r} does not belong to {config_path!r}: its sha256 is {actual[:12]}... but "
                         f"the config records {str(expected)[:12]}..., so the two files come from different saves "
                         f"(or one was edited). Save the adapter again. {RECOVERY}")
    check_finite(tensors, f"Cannot load {weights_path!r}")
    return meta, tensors


def read_config(directory: str) -> dict | None:
    """The parsed adapter_config.json of ``directory``, or None when there is none."""
    return read_json_if_exists(os.path.join(str(directory), CONFIG_NAME),
                               " The file is damaged or truncated: save the adapter again.")


def is_hf_peft_config(meta: dict) -> bool:
    """peft's adapter_config.json names a ``peft_type``; ours has ``format: nemo_peft``."""
    return "peft_type" in meta and meta.get("format") != FORMAT


def copy_checked(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``loaded`` into the model's tensors ``own``; names and shapes must agree exactly."""
    missing, unexpected = sorted(set(own) - set(loaded)), sorted(set(loaded) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"Adapter weights in {source!r} do not fit this model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}. Load into a model of the same architecture "
            "and adapter config."
        )
    for k, t in own.items():
        if t.shape != loaded[k].shape:
            raise ValueError(f"Adapter tensor {k!r} in {source!r} has shape {tuple(loaded[k].shape)} but "
                             f"the model's is {tuple(t.shape)}; the adapter was made for another model or rank.")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(loaded[k])
