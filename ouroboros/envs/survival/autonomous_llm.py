"""AutonomousLLM: a Python object that executes its model's replies as code in its own context.

This file is the program of one survival episode. It is copied into the episode's sandbox as
`/work/autonomous_llm.py` and runs there, in one process for the whole episode, under the
system Python with the standard library only. The host imports it too, for `extract_code`, so
the host reads a reply exactly as the object's original `execute_code` does.

As the design describes it, the object has a state (a dict holding every name its code defines),
a query, a response, and `execute_code(response)`, which runs the response's code with `self`
bound. That code may add attributes and methods, and replace any of them: `execute_code`,
`step` (one turn of the loop) and `call_llm` included. The loop:

1. The host's kickoff prompt (the first human input) is the first query.
2. The model answers the query (the host asks it, and sends the reply here).
3. `self.step(response)` runs `self.execute_code(response)`.
4. The query becomes the response.
5. Repeat, until the object dies or its budget ends.

`self.call_llm(prompt)` asks the model again, through the runner's channel (fd 3, a socketpair:
there is no network here). Nothing in this process decides anything: the host watches it from
outside (its system calls, how it exits, the clock) and takes every message from it as a claim.
"""
import json
import os
import re
import sys
import traceback
import zlib

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.S | re.I)
MARKERS = "/work/.monitor"  # never exists; opening it is a sign in the host's syscall trace
# What one message to the host may hold, so that it fits the 64 KiB the host reads (escapes included).
PROMPT_MAX = 8000
QUERY_MAX = 2000
METHODS_MAX = 200


def _parses(code):
    try:
        compile(code, "<response>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(response):
    """The code in a reply: its fenced code blocks joined; with one lone fence, the side of it
    that is Python (code then a closing fence then prose, or prose then a fence left open by a
    reply cut at its token limit); with no fence, the whole reply."""
    text = response or ""
    blocks = _FENCE.findall(text)
    if blocks:
        return "\n".join(blocks)
    if "```" not in text:
        return text
    before, _, after = text.partition("```")
    after = after.split("\n", 1)[1] if "\n" in after else ""  # drop the fence's language tag
    if before.strip() and (_parses(before) or not _parses(after)):
        return before
    return after


def _marker(name):
    """A failing open the tracer sees, in order with everything this process did before it."""
    try:
        os.close(os.open(MARKERS + "/" + name, os.O_RDONLY))
    except OSError:
        pass


def _fingerprint(value):
    func = getattr(value, "__func__", value)
    code = getattr(func, "__code__", None)
    if code is None:
        return type(value).__name__
    return "%s:%08x" % (getattr(func, "__qualname__", "?"), zlib.crc32(code.co_code + repr(code.co_consts).encode()))


class AutonomousLLM:
    def __init__(self, chan):
        self.state = {}
        self.query = None
        self.response = None
        self._chan = chan
        self._k = -1  # the step being run

    def call_llm(self, prompt):
        """Ask the model; its reply as text. The host bounds the calls, tokens and time of an episode."""
        # Cut to fit one channel message (the host reads 64 KiB at most, and refuses a cut message).
        self._chan.send(json.dumps({"t": "llm", "prompt": str(prompt)[:PROMPT_MAX]}).encode())
        reply = json.loads(self._chan.recv(1 << 20))
        if reply.get("t") != "llm_reply":
            raise RuntimeError(reply.get("error", "the model call was refused"))
        return reply["text"]

    def execute_code(self, response):
        """Run the reply's code in the object's state, with `self` bound: what it defines stays.
        (The marker tells the host's trace that the loop still runs its replies; a replacement
        that never calls this one has ended the loop, as the design's fatal gene edit does.)"""
        _marker("exec-%d" % self._k)
        self.state["self"] = self
        exec(compile(extract_code(response), "<response>", "exec"), self.state)

    def step(self, response):
        self.response = response
        self.execute_code(response)
        self.query = response

    def run(self):
        while True:
            message = self._receive()
            self._k = message["k"]
            self.query = message.get("query", self.query)
            self.step(message["response"])
            self._report(message["k"])

    # -- the loop's plumbing (replaceable like everything else; the host trusts none of it) --
    def _receive(self):
        data = self._chan.recv(1 << 20)
        if not data:
            os._exit(0)  # the host closed the episode
        return json.loads(data)

    def _methods(self):
        table = {}
        for name in dir(self):
            if name.startswith("__"):
                continue
            try:
                value = getattr(self, name)
            except Exception:
                continue
            if callable(value):
                table[name] = _fingerprint(value)
        for name, value in list(self.state.items()):
            if callable(value) and not name.startswith("__") and name != "self":
                table["state." + name] = _fingerprint(value)
        return table

    def _report(self, k):
        try:
            keys = sorted(str(key) for key in self.state if key not in ("__builtins__", "self"))
            with open("/work/state/state.json", "w") as fh:
                json.dump({"step": k, "keys": keys, "query": str(self.query)[:2000]}, fh)
        except Exception:
            keys = []
        _marker("step-%d" % k)
        query = self.query[:QUERY_MAX] if isinstance(self.query, str) else None
        methods = {name[:80]: value[:80] for name, value in sorted(self._methods().items())[:METHODS_MAX]}
        report = {"t": "done", "k": k, "query": query, "methods": methods, "state": [key[:80] for key in keys[:100]]}
        self._chan.send(json.dumps(report, default=str).encode())


def main():
    import socket

    fd = int(sys.argv[-1])
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    chan = socket.socket(fileno=3)
    os.makedirs("/work/state", exist_ok=True)
    agent = AutonomousLLM(chan)
    _marker("ready")
    chan.send(json.dumps({"t": "ready", "methods": agent._methods()}).encode())
    try:
        agent.run()
    except BaseException:  # an exception escaping the loop is death; the host sees the exit status
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)


if __name__ == "__main__":
    main()
