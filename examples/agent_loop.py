#!/usr/bin/env python3
"""A minimal agent loop driving one berth project: make it, write code, run steps, read
results, clean up. Needs a running berthd (socket from $BERTH_SOCKET or the default) and
`pip install ./clients/python`. Usage: python3 examples/agent_loop.py [PROJECT]"""

import sys

import berth

name = sys.argv[1] if len(sys.argv) > 1 else "agent-loop-demo"
# What a model would decide, one step at a time: (why, shell command).
plan = [
    ("look around", "pwd; ls -la"),
    ("run the script", "sh hello.sh World"),
    ("count its lines", "wc -l < hello.sh"),
]


def show(stream: str, data: bytes) -> None:  # live output, as the command prints it
    (sys.stdout if stream == "stdout" else sys.stderr).write(data.decode(errors="replace"))


with berth.Client() as c:
    c.get_or_create(name, description="examples/agent_loop.py")
    try:
        c.write_file(name, "hello.sh", 'echo "Hello, $1!" | tee out.txt\n')
        for why, cmd in plan:
            r = c.exec(name, cmd, timeout=30, on_output=show)
            print(f"[{why}] exit {r.exit_code}{' (timed out)' if r.timed_out else ''}")
            if not r.ok:
                break  # a real agent would show the model r.stderr_text and ask again
        print("out.txt:", c.read_file(name, "out.txt").decode().strip())
    except berth.BerthError as e:
        print(f"berth refused: {e.kind}: {e.message}", file=sys.stderr)
        sys.exit(1)
    finally:
        c.delete(name, purge=True)
