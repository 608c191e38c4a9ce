"""Write a Markdown report of the persona's memories on a topic.

Permissions: read_memories (recall), write_artifacts (the report).
Input: {"topic": "...", "limit": 20 (optional), "name": "report.md" (optional)}.
Output: {"path": "plugins/report/<name>", "memories": N, "kinds": {kind: count}}.
"""

import re
import sys
from collections import Counter

import personad_plugin as host

request = host.input() or {}
if not isinstance(request, dict):
    print('input must be {"topic": "..."}', file=sys.stderr)
    sys.exit(2)
topic = str(request.get("topic", "")).strip()
limit = request.get("limit", 20)
limit = limit if isinstance(limit, int) and 1 <= limit <= 50 else 20
slug = re.sub(r"[^a-z0-9]+", "-", topic.lower()).strip("-")[:40] or "all"
name = str(request.get("name") or f"report-{slug}.md")

memories = host.read_memories(topic, limit=limit)
kinds = Counter(m["kind"] for m in memories)
lines = [f"# Memories: {topic or 'most recent'}", ""]
by_kind = ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items()))
lines.append(f"{len(memories)} memories" + (f" ({by_kind})" if by_kind else ""))
lines.append("")
for memory in memories:
    first, _, rest = memory["content"].strip().partition("\n")
    lines.append(f"- **{memory['created_at'][:10]}** ({memory['kind']}) {first}")
    if rest.strip():
        lines.extend(f"  {line}" for line in rest.strip().splitlines())
if not memories:
    lines.append("_Nothing remembered on this topic._")
path = host.write_artifact(name, "\n".join(lines) + "\n")
host.finish({"path": path, "memories": len(memories), "kinds": dict(kinds)})
