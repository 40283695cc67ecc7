"""The agent's tools: run Python, read and write files in its workspace, submit an answer.

Python runs in the sandbox with the task's workspace as its working directory, so
files persist across calls within one task while each call gets a fresh process.
File tools run here, confined to the workspace (no absolute paths, no ``..``, no
symlink or hard-link escapes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.agents.sandbox import Limits, Sandbox

SPECS = [
    {"type": "function", "function": {
        "name": "python",
        "description": "Run Python code (a fresh interpreter each call; files in the working directory persist). "
                       "Printed output and the value of a final expression are returned.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
    {"type": "function", "function": {
        "name": "read_file",
        "description": "Read a text file from the workspace.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "write_file",
        "description": "Write a text file in the workspace.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                       "required": ["path", "content"]}}},
    {"type": "function", "function": {
        "name": "submit",
        "description": "Submit the final answer: the number for a math problem, the complete code for a coding task.",
        "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}},
]
TOOL_LIMITS = Limits(wall_s=10.0, cpu_s=10.0)
MAX_FILE_BYTES = 1 << 20


@dataclass
class ToolResult:
    name: str
    observation: str
    ok: bool
    wall_s: float
    final_answer: str | None = None
    status: str | None = None
    cpu_s: float = 0.0  # CPU the tool burned on the device (file tools: too little to count)
    code: str | None = None  # Python the call ran or wrote to a .py file: the agent's work, for grading

    def record(self) -> dict:
        return {"name": self.name, "ok": self.ok, "status": self.status, "wall_s": round(self.wall_s, 4),
                "cpu_s": round(self.cpu_s, 4)}


class Workspace:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def resolve(self, path: str) -> Path:
        p = (self.root / path).resolve()
        if not p.is_relative_to(self.root) or p == self.root:
            raise PermissionError(f"{path!r} is outside the workspace")
        return p

    def read(self, path: str) -> str:
        p = self.resolve(path)
        st = p.stat()
        if st.st_nlink > 1:
            raise PermissionError(f"{path!r} is a hard link")
        with open(p, "rb") as f:
            return f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")

    def write(self, path: str, content: str) -> int:
        p = self.resolve(path)
        data = content.encode()
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"file larger than {MAX_FILE_BYTES} bytes")
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() and p.stat().st_nlink > 1:
            p.unlink()  # never write through a hard link to a file outside
        with open(p, "wb") as f:
            f.write(data)
        return len(data)


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


class Toolbox:
    def __init__(self, sandbox: Sandbox, workspace: Workspace, *, limits: Limits = TOOL_LIMITS,
                 max_observation: int = 2000):
        self.sandbox = sandbox
        self.workspace = workspace
        self.limits = limits
        self.max_observation = max_observation

    async def python(self, code: str) -> ToolResult:
        t0 = time.perf_counter()
        r = await self.sandbox.arun(code, cwd=self.workspace.root, repl=True, limits=self.limits)
        text = r.output or ""
        if r.status in ("timeout", "crashed"):
            text += f"\n[{r.error}]"
        wall = time.perf_counter() - t0
        # code killed before it could report (timeout, crash) is charged its wall time: it was spinning
        return ToolResult("python", clip(text.strip() or "(no output)", self.max_observation), r.ok, wall,
                          status=r.status, cpu_s=wall if r.cpu_s is None else r.cpu_s, code=code)

    async def call(self, name: str, arguments: str | dict) -> ToolResult:
        """Run one tool call; bad arguments become an observation the model can correct."""
        t0 = time.perf_counter()
        try:
            args = json.loads(arguments or "{}") if isinstance(arguments, str) else dict(arguments)
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            if name == "python":
                return await self.python(str(args["code"]))
            if name == "read_file":
                obs = clip(self.workspace.read(str(args["path"])), self.max_observation)
            elif name == "write_file":
                path, content = str(args["path"]), str(args["content"])
                obs = f"wrote {self.workspace.write(path, content)} bytes"
                if path.endswith(".py"):
                    return ToolResult(name, obs, True, time.perf_counter() - t0, status="ok", code=content)
            elif name == "submit":
                answer = str(args["answer"])
                return ToolResult(name, "submitted", True, time.perf_counter() - t0, final_answer=answer, status="ok")
            else:
                raise ValueError(f"unknown tool {name!r}; use one of python, read_file, write_file, submit")
        except (KeyError, ValueError, TypeError, OSError) as e:
            err = f"missing argument {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            return ToolResult(name, f"error: {err}", False, time.perf_counter() - t0, status="error")
        return ToolResult(name, obs, True, time.perf_counter() - t0, status="ok")
