"""tasks/judge.py: HELMET's judge prompts, parsing and arithmetic
against HELMET's own code (recorded in tests/fixtures/judge), and the HTTP protocol against a local server. Offline."""
import hashlib
import http.server
import json
import math
import os
import random
import re
import socket
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tasks import judge as jm  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "judge")


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)


CASES, EXPECTED, OUTPUTS = fixture("helmet_cases.json"), fixture("helmet_expected.json"), fixture("judge_outputs.json")
sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731


# ------------------------------------------------------------------------------------------------------------
# 2. prompts and scores: HELMET's own code, run on tests/fixtures/judge/helmet_cases.json (helmet_expected.json)

def test_prompt_templates_are_helmets_character_for_character():
    for name, digest in EXPECTED["templates"].items():
        assert sha(jm.prompt_text(name)) == digest, name


class Scripted:
    """A judge that answers from a list, in order, and records what it was asked."""

    def __init__(self, answers):
        self.answers, self.prompts, self.max_tokens = list(answers), [], []

    def ask(self, prompt, max_tokens=None):
        self.prompts.append(prompt)
        self.max_tokens.append(max_tokens)
        return self.answers.pop(0)


def test_longqa_matches_helmet():
    cases, expected = CASES["longqa"], EXPECTED["longqa"]
    fake = Scripted(c["judge_output"] for c in cases)
    got = [jm.judge_longqa(fake, c["question"], c["answers"], c["output"]) for c in cases]
    assert [sha(p) for p in fake.prompts] == expected["prompts"] and set(fake.max_tokens) == {2048}
    for g, want, c in zip(got, expected["scores"], cases):
        assert g["judge_output"] == c["judge_output"]
        if want is None:  # unparsed: HELMET leaves it out of the average
            assert g["gpt-4-score"] is None and g["fluency"] is None, c["name"]
        else:
            assert (g["fluency"], g["correctness"]) == (want["fluency"], want["correctness"]), c["name"]
            assert g["gpt-4-score"] == want["fluency"] * want["correctness"]
    # HELMET: sum over parsed / number parsed, on its 0-3 scale; collect_results.py then x 100/3
    mean = jm.judged_mean([g["gpt-4-score"] for g in got], "gpt-4-score")
    assert mean == pytest.approx(expected["gpt-4-score"] * 100 / 3, abs=1e-12)
    assert fake.prompts[1].endswith("Answer: Marlow finds Kurtz, gravely ill and dying. He also finds the Russian.\n")
    assert "Correct answers: ['Kurtz, who is dying', 'A sick and dying Kurtz']\n" in fake.prompts[1]


@pytest.mark.parametrize("task,book", [("multi_lexsum", False), ("infbench_sum", True)])
def test_summ_matches_helmet(task, book):
    cases, expected = CASES[task], EXPECTED[task]
    fake = Scripted(a for c in cases for a in c["judge_outputs"])
    got = [jm.judge_summ(fake, c["output"], c["keypoints"], c["reference"], book=book) for c in cases]
    assert [sha(p) for p in fake.prompts] == expected["prompts"] and set(fake.max_tokens) == {4096}
    for g, want, c in zip(got, expected["scores"], cases):
        if want is None:  # a missing or unparsed answer: HELMET skips the sample
            assert g["gpt-4-f1"] is None and g["fluency"] is None, c["name"]
            continue
        for key in ("fluency", "recall_total", "recall_found", "precision_total", "precision_found", "recall",
                    "precision"):
            assert g[key] == want[key] and type(g[key]) is type(want[key]), (c["name"], key)
        assert g["gpt-4-f1"] == want["f1"], c["name"]  # HELMET's per-sample "f1" is fluency x F1, to the bit
        rec, prec = want["recall"], want["precision"]
        assert g["f1"] == (2 * rec * prec / (rec + prec) if rec + prec else 0)
    averaged = expected["averaged"]
    for metric in ("recall", "precision", "fluency"):
        assert jm.judged_mean([g[metric] for g in got], metric) == pytest.approx(averaged["gpt-4-" + metric], 1e-12)
    assert jm.judged_mean([g["gpt-4-f1"] for g in got], "gpt-4-f1") == pytest.approx(100 * averaged["gpt-4-f1"], 1e-12)


def test_where_helmet_crashes_the_sample_is_unscored():
    assert set(EXPECTED["crashes"].values()) <= {"KeyError", "TypeError"}
    for c in CASES["crash_longqa"]:
        assert jm.judge_longqa(Scripted([c["judge_output"]]), c["question"], c["answers"], c["output"])[
            "gpt-4-score"] is None
    for c in CASES["crash_summ"]:
        assert jm.judge_summ(Scripted(c["judge_outputs"]), c["output"], c["keypoints"], c["reference"])[
            "gpt-4-f1"] is None


def test_summ_without_keypoints_is_an_error():
    with pytest.raises(jm.UserError, match="key points"):
        jm.judge_summ(Scripted([]), "Summary: text.", [], "reference")


# ------------------------------------------------------------------------------------------------------------
# 3. parsing, against HELMET's functions written out (the reference; CI has no HELMET checkout)

def helmet_parse_json_longqa(text):
    # HELMET 4526dfb scripts/eval_gpt4_longqa.py:53-61, verbatim
    matches = re.findall(r"\{.*?\}", text, re.DOTALL)
    if len(matches) > 0:
        try:
            r = json.loads(matches[-1])
        except:  # noqa: E722
            return None
        return r
    return None


def helmet_parse_json_summ(text):
    # HELMET 4526dfb scripts/eval_gpt4_summ.py:330-342, verbatim
    matches = re.findall(r"\{.*?\}", text, re.DOTALL)
    if len(matches) > 0:
        try:
            json.loads(matches[-1])
        except:  # noqa: E722
            matches = re.findall(r"(?:```json)(.+)(?:```)", text, re.DOTALL)
            try:
                json.loads(matches[-1])
            except:  # noqa: E722
                return None
        return json.loads(matches[-1])
    return None


def helmet_parse_output(output, prefix="Answer:"):
    # HELMET 4526dfb scripts/eval_gpt4_longqa.py:16-27, verbatim
    output = output.replace("\n", " ")

    def lstrip_string(s, sub):
        return re.sub(f'^{re.escape(sub)}', '', s, flags=re.IGNORECASE)
    patterns = [re.compile(f"(?:{prefix})(.*)(?:\n|$)", flags=re.IGNORECASE), re.compile(r"(?:^)(.*)(?:\n|$)")]
    for pat in patterns:
        matches = pat.search(output)
        if matches is not None:
            return lstrip_string(matches[1].strip(), prefix).strip()
    return None


same = lambda a, b: json.dumps(a) == json.dumps(b)  # noqa: E731 - equal, NaN included


def test_parse_json_equals_helmets():
    texts = [o["text"] for o in OUTPUTS] + ["{" + "[" * 100000 + "}", "{}", "}{", "{\"a\": 1} {\"b\": 2}"]
    for text in texts:
        assert same(jm.parse_json(text), helmet_parse_json_longqa(text)), text[:200]
        assert same(jm.parse_json(text, fenced_fallback=True), helmet_parse_json_summ(text)), text[:200]
    for o in OUTPUTS:  # and what HELMET's own functions returned on them (make_helmet_expected.py)
        want = EXPECTED["parse_json"][o["name"]]
        assert same(jm.parse_json(o["text"]), want["longqa"]), o["name"]
        assert same(jm.parse_json(o["text"], fenced_fallback=True), want["summ"]), o["name"]


def test_parse_json_equals_helmets_on_random_texts():
    rng = random.Random(1)
    pieces = ["{", "}", '"fluency"', '"recall"', ":", " 1", "2.5", ",", "```json", "```", "\n", " x ", "[", "]", "'"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 16)))
        assert same(jm.parse_json(text), helmet_parse_json_longqa(text)), text
        assert same(jm.parse_json(text, fenced_fallback=True), helmet_parse_json_summ(text)), text


def test_parse_answer_equals_helmets_parse_output():
    rng = random.Random(2)
    pieces = ["Answer:", "answer:", "ANSWER: ", "Answer", ":", "\n", " ", "x", "ſ", "\r", "\t", "The end."]
    outputs = [c["output"] for c in CASES["longqa"]] + [
        "", "Answer:", "answer: ANSWER: x", "no prefix here\nsecond line", "  Answer:\n\n  The end.  ",
        "Final answer: 42", "The anſwer: long s", "Answer: a\r\nb"] + [
        "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 10))) for _ in range(2000)]
    for out in outputs:
        assert jm.parse_answer(out) == helmet_parse_output(out), out


# ------------------------------------------------------------------------------------------------------------
# 4. the protocol, against a real HTTP server on 127.0.0.1

def completion(content, model="judge-x"):
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def recorded_answer(body):
    """The judge's recorded answers, chosen by which of HELMET's prompts came in."""
    prompt = body["messages"][0]["content"]
    ml = CASES["multi_lexsum"][0]["judge_outputs"]
    if prompt.startswith("Please act as an impartial judge and evaluate the fluency"):
        return 200, completion(ml[0])
    if "Recall:\n" in prompt:
        return 200, completion(ml[1])
    if "Precision:\n" in prompt:
        return 200, completion(ml[2])
    return 200, completion(CASES["longqa"][0]["judge_output"])


class Server:
    """http.server in a thread; `respond(body) -> (status, JSON or text)`; every request is kept in `requests`."""

    def __init__(self, respond=recorded_answer):
        self.respond, self.requests = respond, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append({"path": self.path, "headers": headers, "body": body})
                status, payload = server.respond(body)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")  # never send the local server's requests to a proxy
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(params=["openai", "urllib"])
def client(request, monkeypatch):
    """The two ways to the endpoint: the openai package, and urllib when it cannot be imported."""
    if request.param == "openai":
        pytest.importorskip("openai")
    else:
        monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` raises ImportError
    return request.param


def test_judges_through_the_endpoint_and_a_rerun_is_free(server, client, tmp_path):
    cache = str(tmp_path / "judge_cache.jsonl")
    lq, ml = CASES["longqa"][0], CASES["multi_lexsum"][0]

    def run():
        judge = jm.Judge(server.url, "judge-x", api_key="sk-test", cache_path=cache)
        assert (judge._client is not None) == (client == "openai")
        return (jm.judge_longqa(judge, lq["question"], lq["answers"], lq["output"]),
                jm.judge_summ(judge, ml["output"], ml["keypoints"], ml["reference"]), judge)

    longqa, summ, judge = run()
    assert longqa["gpt-4-score"] == 3 and (longqa["fluency"], longqa["correctness"]) == (1, 3)
    want = EXPECTED["multi_lexsum"]["scores"][0]
    assert (summ["recall"], summ["precision"], summ["gpt-4-f1"]) == (want["recall"], want["precision"], want["f1"])
    assert len(server.requests) == 4 and judge.requests == 4
    prompts = [jm.longqa_prompt(lq["question"], lq["answers"], lq["output"]),
               *jm.summ_prompts(ml["output"], ml["keypoints"], ml["reference"])]
    for req, prompt, max_tokens in zip(server.requests, prompts, [2048, 4096, 4096, 4096]):
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["authorization"] == "Bearer sk-test"
        body = req["body"]
        assert body["messages"] == [{"role": "user", "content": prompt}]
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-x", 0.1, max_tokens)
        assert (body["top_p"], body["seed"]) == (0.9, 42)  # HELMET's OpenAIModel sends these too
    with open(cache) as f:
        assert len(f.readlines()) == 4
    again = run()  # a fresh Judge on the same cache: the same answers, no HTTP call
    assert again[:2] == (longqa, summ) and len(server.requests) == 4 and again[2].requests == 0


def test_retries_a_rate_limit_then_succeeds(server, client):
    statuses = [429, 503]
    server.respond = lambda body: (statuses.pop(0), {"error": {"message": "slow down"}}) if statuses else \
        recorded_answer(body)
    judge = jm.Judge(server.url, "judge-x", retries=2, backoff=0.01)
    assert judge.ask("Is this fine?") == CASES["longqa"][0]["judge_output"]
    assert len(server.requests) == 3


def test_server_error_ends_in_one_judge_error_line(server, client):
    server.respond = lambda body: (500, {"error": {"message": "the server\nfell over"}})
    judge = jm.Judge(server.url, "judge-x", retries=2, backoff=0.01)
    with pytest.raises(jm.JudgeError) as e:
        judge.ask("prompt")
    message = str(e.value)
    assert "\n" not in message and server.url in message and "500" in message and "3 attempt" in message
    assert len(server.requests) == 3


def test_client_error_is_not_retried(server, client):
    server.respond = lambda body: (401, {"error": {"message": "Incorrect API key provided"}})
    with pytest.raises(jm.JudgeError, match="401"):
        jm.Judge(server.url, "judge-x", retries=3, backoff=0.01).ask("prompt")
    assert len(server.requests) == 1


def test_a_page_that_is_not_a_completion_is_a_judge_error(server, client):
    server.respond = lambda body: (200, "<html>a login page</html>")
    with pytest.raises(jm.JudgeError, match="not a chat-completions response"):
        jm.Judge(server.url, "judge-x").ask("prompt")


def test_unreachable_url_ends_in_one_judge_error_line(client, monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(jm.JudgeError) as e:
        jm.Judge(url, "judge-x", retries=1, backoff=0.01, timeout=5).ask("prompt")
    assert "\n" not in str(e.value) and url in str(e.value) and "cannot connect" in str(e.value)


def test_api_key_from_the_environment(server, client, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    jm.Judge(server.url, "judge-x").ask("one")
    assert server.requests[-1]["headers"]["authorization"] == "Bearer sk-env"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-mine")
    jm.Judge(server.url, "judge-x", key_env="MY_JUDGE_KEY").ask("two")
    assert server.requests[-1]["headers"]["authorization"] == "Bearer sk-mine"


def test_no_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setitem(sys.modules, "openai", None)
    jm.Judge(server.url, "judge-x").ask("one")
    assert "authorization" not in server.requests[-1]["headers"]


def test_filtered_answer_is_none_and_not_cached(server, client, tmp_path):
    server.respond = lambda body: (200, completion(None))
    judge = jm.Judge(server.url, "judge-x", cache_path=str(tmp_path / "c.jsonl"))
    assert judge.ask("p") is None and judge.ask("p") is None
    assert len(server.requests) == 2 and not os.path.exists(tmp_path / "c.jsonl")


def test_cache_keeps_going_after_a_cut_line_and_follows_cache_path(server, tmp_path):
    judge = jm.Judge(server.url, "judge-x", cache_path=None)
    judge.cache_path = str(tmp_path / "cache.jsonl")  # evaluate.py sets it after construction
    first = judge.ask("first")
    with open(judge.cache_path, "a") as f:
        f.write('{"key": "cut sho')  # a crash in the middle of a write
    again = jm.Judge(server.url, "judge-x", cache_path=judge.cache_path)
    assert again.ask("first") == first and again.requests == 0
    again.ask("second")
    with open(judge.cache_path) as f:
        lines = f.read().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["key"] == again._key("second")
    third = jm.Judge(server.url, "judge-x", cache_path=judge.cache_path)
    third.ask("first"), third.ask("second")
    assert third.requests == 0
    other = jm.Judge(server.url, "judge-y", cache_path=judge.cache_path, temperature=0.0)  # another key
    other.ask("first")
    assert other.requests == 1


def test_judged_mean_scales_as_helmet_collect_results():
    assert jm.judged_mean([3, None, 0], "gpt-4-score") == pytest.approx(50.0)
    assert jm.judged_mean([0.5, None], "gpt-4-f1") == 50.0
    assert jm.judged_mean([None], "gpt-4-f1") is None
    assert math.isclose(jm.judged_mean([0.25, 0.75], "recall"), 0.5)


# ------------------------------------------------------------------------------------------------------------
# 5. no endpoint can hang a run, and an answer that is not text is never cached


class Trickle:
    """A server that sends its headers, then one byte of the body every `every` seconds (a body never complete in
    the judge's time): socket timeouts alone never fire on it."""

    def __init__(self, every=0.2, total=60):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(total))
                self.end_headers()
                try:
                    for _ in range(total):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(every)
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.mark.parametrize("kind", ["silent", "trickling"])
def test_a_silent_or_trickling_endpoint_ends_in_one_judge_error(kind, client, monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    if kind == "silent":
        s = Server(lambda body: (time.sleep(30), (200, completion("late")))[1])
    else:
        s = Trickle()
    judge = jm.Judge(s.url, "judge-x", timeout=0.5, retries=3, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(jm.JudgeError, match=r"no complete answer within 0.5 s \(--judge-timeout\) after \d attempt"):
        judge.ask("a prompt")
    assert time.monotonic() - start < 3 * 0.5 + 1  # the deadline per prompt: 3 x the timeout
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.mark.parametrize("content", [{"text": "a"}, ["a"], 3])
def test_an_answer_that_is_not_text_is_a_judge_error_and_not_cached(server, client, tmp_path, content):
    server.respond = lambda body: (200, completion(content))
    cache = tmp_path / "cache.jsonl"
    judge = jm.Judge(server.url, "judge-x", cache_path=str(cache))
    for _ in range(2):  # asked again, and refused again: nothing was cached
        with pytest.raises(jm.JudgeError, match="the answer's content is .*, not text"):
            judge.ask("a prompt")
    assert not cache.exists() and len(server.requests) == 2
