"""The small helpers every command shares: the user's error, progress lines, writing a file so that a crash never
leaves half of it, reading JSON and JSON-lines files with errors that name the line, and the one exception boundary
of a command.

The contract, said once: code anywhere raises `UserError` (or a subclass: data.py's `DataError`, settings.py's
`ConfigError`, checkpoint.py's `CheckpointError`) for a problem the user can fix, with a message that names the
setting, file or field. Only a command's entry point turns it into output, inside `one_line_errors`: one `error:`
line on stderr and a non-zero exit, never a traceback. Progress goes to stderr (`log`); results go to stdout.
"""
import argparse, contextlib, errno, gzip, hashlib, json, os, signal, sys, zlib


class UserError(Exception):
    """A problem the user can fix (a bad setting, a missing or malformed file): printed as one line, no trace."""


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def fail(message, code=1):
    """Leave the process now with one `error:` line (newlines folded) and exit status `code`."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(code)


# ------------------------------------------------------------------------------------------------ writing files

def _temporary(path):
    return f"{path}.tmp{os.getpid()}"


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Open a temporary beside `path` for writing; on success it is flushed, synced and renamed to `path`, on any
    failure (a full disk, Ctrl-C) it is removed. Readers see the old file or the whole new one, never a part."""
    tmp = _temporary(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write(path, data):
    """Write bytes (or text, as UTF-8) to `path` through `atomic_open`."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ reading files

def read_json(path, kind=None):
    """A JSON file's value; `kind` (dict or list) is the type it must have. Errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if kind is not None and not isinstance(value, kind):
        expected = {dict: "a JSON object ({\"name\": value, ...})", list: "a JSON list"}.get(kind, kind.__name__)
        raise UserError(f"{path}: expected {expected}, found {json.dumps(value)[:60]}")
    return value


class Malformed(str):
    """Why a JSON line is not usable (a str subclass, so that a line whose value is a plain string is still told
    apart from a reader's report)."""


def read_jsonl(path):
    """(where, value) per non-blank line of a .jsonl or .jsonl.gz file, where `where` is "path:line"; a line that is
    not UTF-8 or not JSON gives (where, Malformed(why)) so that the caller decides whether to skip it. A cut-off or
    corrupt gzip stream is a UserError."""
    n = 0
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue  # a blank line holds nothing (typically a trailing newline)
                where = f"{path}:{n}"
                try:
                    yield where, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield where, Malformed(f"invalid UTF-8 at byte {e.start} of the line")
                except json.JSONDecodeError as e:
                    yield where, Malformed(f"malformed JSON ({e.msg} at column {e.colno})")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a cut-off download, or not gzip at all
        raise UserError(f"{path}: truncated or corrupt gzip data after line {n} ({e}); download or compress it "
                        f"again") from None


# ------------------------------------------------------------------------------------------------ a command's edge

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes (a wrong type, a value out of range, a missing argument) end as every other error
    does: one `error:` line naming the option, exit status 2 (argparse's own), no usage block. Its subcommands'
    parsers are of this class too."""

    def error(self, message):
        fail(f"{self.prog}: {message} (see --help)", 2)


def number(kind=int, low=None, high=None, above=False):
    """An argparse `type`: a `kind` (int or float) in [low, high], or (low, high] with `above`; the one place a
    command line states an option's range, e.g. `type=number(float, 0, 1, above=True)` for a top-p."""
    noun = "an integer" if kind is int else "a number"
    bounds = " and ".join(([f"{'>' if above else '>='} {low}"] if low is not None else []) +
                          ([f"<= {high}"] if high is not None else []))

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}{' ' + bounds if bounds else ''}, got {text!r}") \
                from None
        if value != value or low is not None and (value <= low if above else value < low) or \
                high is not None and value > high:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, got {text}")
        return value
    return parse


@contextlib.contextmanager
def one_line_errors(target=None):
    """Every failure a user can cause ends here in one line and a non-zero exit: a UserError as it is, Ctrl-C (130),
    a full disk, another OS error by file. Writers have already removed their temporaries as the error unwound
    through them, so `target` (what the command writes, if anything) holds nothing half-written."""
    where = f" in {target}" if target else ""
    try:
        yield
    except UserError as e:
        fail(e)
    except KeyboardInterrupt:
        fail(f"interrupted; temporary files removed, nothing half-written{where}", 130)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            fail(f"no space left on device while writing {target or e.filename}; temporary files removed: free "
                 f"some space or write elsewhere")
        fail(f"{e.filename}: {e.strerror}" if e.filename else e)


def exit_process(main, *args):
    """Run `main` as a process's whole life and leave with os._exit, skipping the interpreter's teardown. Even after
    barrier and destroy_process_group, a gloo worker thread can still be joinable when C++ static destructors run
    at exit, and std::terminate then aborts a rank whose work is done and saved (SIGABRT, seen in CI on a loaded
    2-core machine). Output is flushed first; nothing else waits for the teardown."""
    try:
        main(*args)
        code = 0
    except SystemExit as e:  # sys.exit(2) and friends keep their status; a message is printed as Python would
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C outside the command's own boundary (as it leaves it): still one line, 130
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_on_interrupt(message="interrupted while starting; nothing was written"):
    """From now until SIGINT's handler is set again: Ctrl-C prints one `error:` line and exits 130 at once. For a
    command's first seconds, while torch imports (a KeyboardInterrupt there surfaces as a traceback or an
    ImportError); the command restores `signal.default_int_handler` once its imports are done."""
    def leave(signum, frame):
        os.write(2, f"error: {message}\n".encode())
        os._exit(130)
    signal.signal(signal.SIGINT, leave)
