"""The ``task`` agent: a request decomposed into an ordered task list.

Offline the plan is rule-based and deterministic (the same request gives the same plan):

1. The request is split into work items: its list lines, else its sentences and
   comma/"and" enumerations ("Add login, a settings page and email notifications" is
   three items, each inheriting the verb "Add").
2. Each item gets a kind from its words (bug, docs, tests, research, data, api, security,
   performance, infrastructure, feature) and the steps of that kind for the
   ``detail_level``: ``low`` one task per item, ``medium`` design/build/verify steps,
   ``high`` also requirements, documentation and a scope task first and a release task last.
3. Dependencies: steps of an item form a chain; items are layered (research, data, api,
   features, tests, docs, infrastructure) and an item's first step depends on the last
   steps of the nearest lower layer; closing tasks depend on every open end. Tasks are
   numbered in dependency order, and the plan ends with the waves of work that can run
   in parallel.

Follow-ups use the history: "more detail" re-plans the previous request one level deeper
(unless ``detail_level`` asks for another level than the previous plan's), "less detail"
one level shallower, "also <items>" adds items to the previous request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from archon_chat.agents import text as tx
from archon_chat.agents.base import OFFLINE_NOTE, Emit, Toolkit, chat_history
from archon_chat.agents.render import Doc, Item
from archon_chat.agents.schema import AgentRequest, AgentSpec, Param

LEVELS = ("low", "medium", "high")

SPEC = AgentSpec(
    name="task",
    title="Tasks",
    description=(
        "Decomposes a request into an ordered markdown task list with dependencies and "
        "acceptance criteria, deeper at higher detail levels."
    ),
    params=(
        Param("project_id", "string", None, "the project the plan belongs to", max_length=200),
        Param(
            "detail_level",
            "string",
            "medium",
            "low: one task per work item; medium: design, build and verify steps; "
            "high: also requirements, documentation, scope and release",
            choices=LEVELS,
        ),
    ),
)

MAX_ITEMS = 12
_VERBS = """
    add build create implement fix write design migrate refactor update remove delete deploy
    document test improve support integrate configure set setup install upgrade replace
    rewrite optimize optimise speed investigate evaluate research compare prototype review
    release publish ship automate monitor secure audit clean rename split merge move port
    extend enable disable allow make introduce provide expose store cache validate translate
    localize benchmark measure profile plan draft prepare define collect analyse analyze
"""
VERBS = frozenset(_VERBS.split())
_LEAD = re.compile(
    r"^\s*(?:please\s+)?(?:(?:can|could|would) you\s+)?(?:help (?:me|us)\s+(?:to\s+)?)?"
    r"(?:(?:create|make|write|give me|draft|build)\s+(?:a|an|the)?\s*(?:detailed\s+)?"
    r"(?:plan|task list|roadmap|breakdown)\s+(?:for|to|of)\s+|"
    r"(?:plan|break down|decompose|outline)\s+(?:how to\s+)?|"
    r"(?:i|we)\s+(?:need|want|have|would like|plan)\s+to\s+|"
    r"how (?:do|should|can|could) (?:i|we)\s+)",
    re.IGNORECASE,
)
_MORE = re.compile(
    r"\b(more detail(?:ed)?|in (?:more )?depth|deeper|expand|elaborate|finer|"
    r"break (?:it|this|that|them) down(?: further| more)?|more granular)\b",
    re.IGNORECASE,
)
_LESS = re.compile(
    r"\b(less detail(?:ed)?|simpler|shorter|high[- ]level|fewer tasks|coarser|summari[sz]e)\b",
    re.IGNORECASE,
)
_ALSO = re.compile(r"^\s*(?:also|and also|plus|additionally|and)\b[\s,:]*", re.IGNORECASE)


class _Splitter:
    """``re`` has no ``partition``: split once at the first match, keeping it."""

    def __init__(self, pattern: str) -> None:
        self._re = re.compile(pattern, re.IGNORECASE)

    def partition(self, text: str) -> tuple[str, str, str]:
        match = self._re.search(text)
        if match is None:
            return text, "", ""
        return text[: match.start()], match.group(0), text[match.end() :]


_WITH = _Splitter(r"\s+(?:with|including|that (?:has|supports))\s+")
_CONNECTIVE = re.compile(r"^(?:also|and|then|plus|finally|next|and then)\s+", re.IGNORECASE)
_POINTS_BACK = re.compile(r"\b(it|this|that|the plan|the same|again)\b", re.IGNORECASE)

KIND_WORDS: dict[str, tuple[str, ...]] = {
    "bug": ("fix", "bug", "crash", "error", "broken", "regression", "fails", "failing", "issue"),
    "research": ("investigate", "evaluate", "research", "compare", "spike", "explore", "assess"),
    "docs": ("document", "docs", "documentation", "readme", "guide", "tutorial", "manual"),
    "tests": ("test", "tests", "testing", "coverage", "e2e"),
    "data": (
        "database",
        "schema",
        "migration",
        "migrate",
        "table",
        "sqlite",
        "postgres",
        "model",
        "index",
        "storage",
        "store",
        "data",
    ),
    "security": (
        "auth",
        "authentication",
        "login",
        "password",
        "permission",
        "permissions",
        "security",
        "token",
        "oauth",
        "encrypt",
        "encryption",
        "secure",
        "audit",
        "sign",
        "signin",
        "signup",
        "sso",
        "saml",
        "oidc",
        "jwt",
        "2fa",
        "mfa",
    ),
    "api": (
        "api",
        "endpoint",
        "endpoints",
        "rest",
        "route",
        "graphql",
        "webhook",
        "backend",
        "server",
        "service",
        "socket",
    ),
    "performance": (
        "performance",
        "faster",
        "latency",
        "optimize",
        "optimise",
        "speed",
        "benchmark",
        "profile",
        "memory",
        "throughput",
        "cache",
        "caching",
    ),
    "infrastructure": (
        "deploy",
        "deployment",
        "ci",
        "docker",
        "kubernetes",
        "pipeline",
        "release",
        "monitoring",
        "monitor",
        "alerting",
        "infrastructure",
        "hosting",
        "backup",
        "backups",
    ),
}
#: How a piece of work named without a verb ("a CSV export") is phrased as a task.
DEFAULT_VERB = {
    "bug": "Fix",
    "research": "Investigate",
    "docs": "Write",
    "tests": "Write",
    "data": "Build",
    "security": "Build",
    "api": "Build",
    "performance": "Improve",
    "infrastructure": "Set up",
    "feature": "Build",
}
#: Work flows from lower to higher layers: an item waits for the nearest lower layer.
LAYER = {
    "research": 0,
    "data": 1,
    "security": 2,
    "api": 2,
    "feature": 3,
    "bug": 3,
    "performance": 3,
    "tests": 4,
    "docs": 5,
    "infrastructure": 6,
}

# (title, acceptance criteria) per kind and step; {o} is the item's object, {i} the item.
Step = tuple[str, tuple[str, ...]]
STEPS: dict[str, dict[str, tuple[Step, ...]]] = {
    "feature": {
        "low": (("{I}", ("The behaviour of {o} matches the request", "Covered by a test")),),
        "medium": (
            (
                "Design {o}",
                (
                    "The approach for {o} is written down and agreed",
                    "Interfaces and data it needs are listed",
                ),
            ),
            (
                "Implement {o}",
                (
                    "The behaviour of {o} matches the request",
                    "The code passes lint and type checks",
                ),
            ),
            (
                "Test {o}",
                (
                    "Automated tests cover the main path and the edge cases of {o}",
                    "The existing test suite still passes",
                ),
            ),
        ),
        "high": (
            (
                "Write the requirements for {o}",
                ("User-visible behaviour of {o} is listed", "Out-of-scope items are named"),
            ),
            (
                "Design {o}",
                (
                    "The approach for {o} is written down and reviewed",
                    "Interfaces, data and failure modes are listed",
                ),
            ),
            (
                "Implement {o}",
                (
                    "The behaviour of {o} matches the requirements",
                    "Errors are handled and reported clearly",
                    "The code passes lint and type checks",
                ),
            ),
            (
                "Test {o}",
                (
                    "Unit tests cover the main path and edge cases of {o}",
                    "An end-to-end test exercises {o} as a user would",
                    "The existing test suite still passes",
                ),
            ),
            (
                "Document {o}",
                ("User and developer documentation describe {o}", "The changelog mentions {o}"),
            ),
        ),
    },
    "bug": {
        "low": (("{I}", ("The problem no longer occurs", "A regression test covers it")),),
        "medium": (
            (
                "Reproduce {o} with a failing test",
                ("A test fails because of {o}", "The steps to reproduce are recorded"),
            ),
            ("Fix {o}", ("The failing test passes", "No other test regresses")),
            (
                "Verify the fix for {o}",
                ("The original report's steps no longer fail", "The fix is reviewed"),
            ),
        ),
        "high": (
            (
                "Reproduce {o} with a failing test",
                ("A test fails because of {o}", "The steps to reproduce are recorded"),
            ),
            (
                "Find the root cause of {o}",
                (
                    "The cause is explained in the issue",
                    "Other places with the same cause are listed",
                ),
            ),
            (
                "Fix {o}",
                (
                    "The failing test passes",
                    "Same-cause places are fixed too",
                    "No other test regresses",
                ),
            ),
            (
                "Verify the fix for {o}",
                (
                    "The original report's steps no longer fail",
                    "The fix is reviewed",
                    "Monitoring shows no recurrence",
                ),
            ),
        ),
    },
    "docs": {
        "low": (("{I}", ("The documentation is published", "A newcomer can follow it")),),
        "medium": (
            ("Outline {o}", ("Audience and sections of {o} are agreed",)),
            (
                "Write {o}",
                ("Every section of the outline is written", "Examples are tested and work"),
            ),
            ("Review {o}", ("A reviewer followed {o} without help", "It is published")),
        ),
        "high": (
            (
                "Define the audience and outline of {o}",
                ("Audience, goals and sections are agreed",),
            ),
            (
                "Write {o}",
                ("Every section of the outline is written", "Terms are used consistently"),
            ),
            (
                "Add examples to {o}",
                ("Each example is tested and works", "Examples cover the common cases"),
            ),
            (
                "Review and publish {o}",
                (
                    "A newcomer followed {o} without help",
                    "It is published and linked from the index",
                ),
            ),
        ),
    },
    "tests": {
        "low": (("{I}", ("The tests run in CI", "They fail when the behaviour breaks")),),
        "medium": (
            ("List the cases for {o}", ("Main paths, edge cases and failures are listed",)),
            (
                "Write {o}",
                (
                    "Every listed case has a deterministic test",
                    "The tests fail when the behaviour breaks",
                ),
            ),
            ("Run {o} in CI", ("CI runs the tests on every change", "The suite stays green")),
        ),
        "high": (
            (
                "List the cases for {o}",
                ("Main paths, edge cases and failures are listed", "Risky areas are ranked"),
            ),
            ("Build fixtures and fakes for {o}", ("Tests need no network or shared state",)),
            (
                "Write {o}",
                (
                    "Every listed case has a deterministic test",
                    "The tests fail when the behaviour breaks",
                ),
            ),
            (
                "Run {o} in CI",
                ("CI runs the tests on every change", "Coverage of the changed code is reported"),
            ),
        ),
    },
    "research": {
        "low": (("{I}", ("A written recommendation exists",)),),
        "medium": (
            ("Define the questions for {o}", ("Questions and decision criteria are written",)),
            ("Investigate {o}", ("Each option is tried against the criteria",)),
            ("Recommend a direction for {o}", ("A recommendation with trade-offs is shared",)),
        ),
        "high": (
            (
                "Define the questions for {o}",
                ("Questions and decision criteria are written", "Time box is agreed"),
            ),
            (
                "Investigate {o}",
                (
                    "Each option is tried against the criteria",
                    "Findings are recorded with evidence",
                ),
            ),
            ("Prototype the leading option for {o}", ("The prototype answers the open risks",)),
            (
                "Decide on {o}",
                ("The decision and its reasons are recorded", "Follow-up work is listed"),
            ),
        ),
    },
    "data": {
        "low": (("{I}", ("The data change is applied", "Existing data is preserved")),),
        "medium": (
            (
                "Design the data changes for {o}",
                ("Schema changes are written down", "The migration path is agreed"),
            ),
            (
                "Implement {o}",
                (
                    "The migration runs forwards on a copy of real data",
                    "Existing data is preserved",
                ),
            ),
            (
                "Verify {o}",
                ("Queries return the expected results", "The migration is tested in CI"),
            ),
        ),
        "high": (
            ("Write the requirements for {o}", ("Data kept, changed and dropped is listed",)),
            (
                "Design the data changes for {o}",
                (
                    "Schema changes are written down and reviewed",
                    "Indexes and constraints are listed",
                ),
            ),
            (
                "Implement {o}",
                (
                    "The migration runs forwards on a copy of real data",
                    "Existing data is preserved",
                    "A rollback is possible",
                ),
            ),
            (
                "Verify {o}",
                (
                    "Queries return the expected results",
                    "The migration is tested in CI",
                    "Performance is measured",
                ),
            ),
            ("Document {o}", ("The schema documentation is updated",)),
        ),
    },
    "infrastructure": {
        "low": (("{I}", ("It runs in the target environment", "It is repeatable")),),
        "medium": (
            ("Plan {o}", ("Environments, access and steps are written down",)),
            ("Set up {o}", ("It runs in the target environment", "It is scripted")),
            ("Verify {o}", ("A dry run succeeds", "Failures alert someone")),
        ),
        "high": (
            (
                "Plan {o}",
                (
                    "Environments, access and steps are written down",
                    "Risks and a rollback plan are listed",
                ),
            ),
            ("Set up {o}", ("It runs in the target environment", "It is scripted")),
            ("Verify {o}", ("A dry run succeeds", "A rollback was rehearsed")),
            (
                "Write the runbook for {o}",
                ("Operators can run and recover it from the runbook", "Alerts link to the runbook"),
            ),
        ),
    },
}
# Kinds that build software share the feature steps, with their own emphasis.
STEPS["api"] = STEPS["feature"]
STEPS["security"] = {
    level: (
        *steps[:-1],
        (
            "Review the security of {o}",
            (
                "Threats to {o} are listed and mitigated",
                "Negative tests (bad input, no permission) pass",
            ),
        ),
    )
    if level != "low"
    else steps
    for level, steps in STEPS["feature"].items()
}
STEPS["performance"] = {
    "low": (("{I}", ("The improvement is measured against a baseline",)),),
    "medium": (
        (
            "Measure the baseline for {o}",
            ("A repeatable benchmark exists", "Baseline figures are recorded"),
        ),
        ("Implement {o}", ("The benchmark improves measurably", "Behaviour is unchanged")),
        ("Verify {o}", ("The tests pass", "The new figures are recorded")),
    ),
    "high": (
        ("Set the performance target for {o}", ("The target and how it is measured are agreed",)),
        (
            "Measure the baseline for {o}",
            ("A repeatable benchmark exists", "Profiles show where the time goes"),
        ),
        ("Implement {o}", ("The benchmark meets the target", "Behaviour is unchanged")),
        ("Verify {o}", ("The tests pass", "The benchmark runs in CI to catch regressions")),
    ),
}


@dataclass
class Task:
    id: str
    title: str
    criteria: tuple[str, ...]
    depends: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkItem:
    text: str  # "Add a settings page"
    verb: str  # "Add" ("" when the item has none)
    obj: str  # "a settings page"
    kind: str


class TaskAgent:
    spec = SPEC

    async def answer(self, request: AgentRequest, tools: Toolkit, emit: Emit) -> None:
        subject, level, note = resolve(request)
        project = request.text("project_id")
        if tools.llm is not None:
            await tools.llm_stream(llm_messages(request, subject, level, project), emit)
            return
        text = await tools.in_thread(compose, subject, level, project, note)
        await tools.stream_text(text, emit)


def resolve(request: AgentRequest) -> tuple[str, str, str]:
    """``(request to plan, detail level, note)``: follow-ups resolved against history."""
    level = request.text("detail_level") or "medium"
    explicit = "detail_level" in request.given
    previous = _previous_request(request)
    prompt = request.prompt.strip()
    if previous is None:
        return prompt, level, ""
    more, less = bool(_MORE.search(prompt)), bool(_LESS.search(prompt))
    also = _ALSO.match(prompt)
    if more or less:
        before = _previous_level(request)
        # A client that always sends its current setting (the panel does) asks for a
        # new level only when the setting differs from the previous plan's.
        if not explicit or level == before:
            base = before or level
            step = 1 if more else -1
            level = LEVELS[max(0, min(len(LEVELS) - 1, LEVELS.index(base) + step))]
        return previous, level, f"Re-planned your previous request at detail level {level}."
    if also:
        extra = prompt[also.end() :].strip()
        extra = extra[:1].upper() + extra[1:]
        return f"{previous.rstrip(' .')}. {extra}", level, "Your previous request, extended."
    if _POINTS_BACK.search(prompt) and not _work_items(prompt)[1:]:
        return previous, level, "Re-planned your previous request."
    return prompt, level, ""


def _is_refinement(text: str) -> bool:
    return bool(_MORE.search(text) or _LESS.search(text)) and len(text.split()) <= 12


def _previous_request(request: AgentRequest) -> str | None:
    """The latest user message that asked for a plan (not a refinement of one)."""
    for turn in reversed(request.history):
        if turn.role == "user" and not _is_refinement(turn.content):
            return turn.content.strip()
    return None


def _previous_level(request: AgentRequest) -> str | None:
    answer = request.last("assistant")
    if answer:
        found = re.search(r"detail level:?\**\s*\**(low|medium|high)", answer, re.IGNORECASE)
        if found:
            return found.group(1).lower()
    return None


# -- decomposition


def _strip_lead(text: str) -> str:
    return _LEAD.sub("", text, count=1).strip()


def _work_items(text: str) -> list[str]:
    """The pieces of work named in ``text``, in order."""
    listed = [body for kind, body in tx.blocks(text) if kind == "list"]
    if len(listed) >= 2:
        return [_strip_lead(tx.strip_inline(i)).rstrip(" .;") for i in listed]
    items: list[str] = []
    for sentence in tx.sentences(_strip_lead(text)) or [text]:
        for clause in re.split(r";|\s+(?:and\s+)?then\s+", _strip_lead(sentence)):
            # "Build X with A and B": X, then A and B as items of their own.
            head, sep, tail = _WITH.partition(clause)
            parts = [p for p in re.split(r",\s*(?:and\s+)?|\s+and\s+", tail) if p.strip()]
            if sep and len(parts) >= 2:
                items.append(head)
                items.extend(parts)
            else:
                items.extend(_enumeration(clause))
    cleaned = (_CONNECTIVE.sub("", s.strip(" .,;:!?")) for s in items)
    return [i for i in cleaned if i]


def _enumeration(clause: str) -> list[str]:
    parts = [p.strip() for p in re.split(r",\s*", clause) if p.strip()]
    if len(parts) >= 2:
        # "a, b and c" / "a, b, and c": the last part holds two items.
        last = re.split(r"^(?:and|or)\s+|\s+(?:and|or)\s+", parts[-1], maxsplit=1)
        parts = parts[:-1] + [p for p in last if p and p.strip()]
        return [re.sub(r"^(?:and|or)\s+", "", p) for p in parts]
    halves = re.split(r"\s+and\s+", clause, maxsplit=1)
    # "fix X and add Y" is two items; "search and replace" is one (a verb needs an object).
    if len(halves) == 2 and _verb(halves[1]) and len(halves[1].split()) >= 2:
        return [halves[0], *_enumeration(halves[1])]
    return [clause]


def _verb(text: str) -> str:
    """The verb a piece of work starts with, in its base form ("adding" → "add")."""
    first = text.split(maxsplit=1)[0].lower() if text.split() else ""
    return base_verb(first) or ""


def base_verb(word: str) -> str | None:
    if word in VERBS:
        return word
    if word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
        # adding → add, creating → create, setting → set
        for candidate in (stem, stem + "e", stem[:-1]):
            if candidate in VERBS:
                return candidate
    return None


def _kind(text: str) -> str:
    words = set(w.lower() for w in tx.words(text))
    for kind, keys in KIND_WORDS.items():
        if words & set(keys):
            return kind
    return "feature"


def decompose(request: str) -> tuple[str, list[WorkItem]]:
    """``(goal, work items)`` of a request."""
    raw = _work_items(request)[:MAX_ITEMS] or [request.strip()]
    items: list[WorkItem] = []
    lead_verb = ""
    for text in tx.unique(raw):
        verb = _verb(text)
        if verb:
            # "adding single sign-on" → "add single sign-on"
            text = f"{verb} {text.split(maxsplit=1)[1]}" if len(text.split()) > 1 else verb
            lead_verb = lead_verb or verb
        elif lead_verb:
            text, verb = f"{lead_verb} {text}", lead_verb
        obj = text.split(maxsplit=1)[1] if verb and len(text.split()) > 1 else text
        if verb == "set" and obj.lower().startswith("up "):
            obj = obj[3:]
        kind = _kind(text)
        if not verb:
            text = f"{DEFAULT_VERB[kind]} {text}"
        items.append(WorkItem(text[:1].upper() + text[1:], verb, obj, kind))
    goal = _strip_lead(request.strip().splitlines()[0]).rstrip(" .:")
    if len(items) > 1 and len(goal) > 80:
        goal = items[0].text if len(items) == 1 else f"{items[0].text} and {len(items) - 1} more"
    return goal or items[0].text, items


def plan(request: str, level: str) -> tuple[str, list[WorkItem], list[Task]]:
    """The ordered tasks for ``request`` at ``level``."""
    goal, items = decompose(request)
    criteria_count = {"low": 1, "medium": 2, "high": 3}[level]
    tasks: list[Task] = []

    def add(title: str, criteria: Sequence[str], depends: Sequence[str]) -> Task:
        task = Task(f"T{len(tasks) + 1}", title, tuple(criteria[:criteria_count]), list(depends))
        tasks.append(task)
        return task

    scope = None
    if level == "high":
        scope = add(
            "Agree on scope and success criteria",
            (
                "Goals, non-goals and success measures are written down",
                "Stakeholders have agreed to them",
                "Risks are listed with owners",
            ),
            (),
        )
    ordered = sorted(enumerate(items), key=lambda pair: (LAYER[pair[1].kind], pair[0]))
    last_of_layer: dict[int, list[str]] = {}
    depended: set[str] = set()
    for _, item in ordered:
        layer = LAYER[item.kind]
        lower = [lv for lv in last_of_layer if lv < layer]
        upstream = last_of_layer[max(lower)] if lower else ([scope.id] if scope else [])
        previous: list[str] = list(upstream)
        for title, criteria in STEPS[item.kind][level]:
            filled = [_fill(c, item) for c in criteria]
            task = add(_fill(title, item), filled, previous)
            depended.update(previous)
            previous = [task.id]
        last_of_layer.setdefault(layer, []).extend(previous)

    open_ends = [t.id for t in tasks if t.id not in depended and t is not scope]
    if level == "medium" and len(items) > 1:
        add(
            "Integrate and verify everything end to end",
            ("All the work items work together as requested", "The full test suite passes"),
            open_ends,
        )
    elif level == "high":
        add(
            "Review and release",
            (
                "Every acceptance criterion above is checked off",
                "The release is rolled out with a rollback plan",
                "Monitoring confirms it works in production",
            ),
            open_ends,
        )
    return goal, items, tasks


def _fill(template: str, item: WorkItem) -> str:
    return template.replace("{I}", item.text).replace("{o}", short_name(item.obj))


_QUALIFIER = re.compile(
    r"\s+(?:with|for|so that|that|which|in order to|using|by|via|including|without)\s+",
    re.IGNORECASE,
)
#: Longer objects are cut at a qualifier ("a Slack integration for the chat panel with
#: OAuth login" → "a Slack integration"): repeated in every step, the whole would drown it.
SHORT_NAME_WORDS = 6


def short_name(obj: str) -> str:
    obj = obj.strip().rstrip(" .")
    if len(obj.split()) <= SHORT_NAME_WORDS:
        return obj
    head = _QUALIFIER.split(obj, maxsplit=1)[0]
    if len(head.split()) >= 2:
        obj = head
    return " ".join(obj.split()[: SHORT_NAME_WORDS + 2])


def waves(tasks: list[Task]) -> list[list[str]]:
    """Tasks grouped by the earliest round in which all their dependencies are done."""
    depth: dict[str, int] = {}
    for task in tasks:  # numbered in dependency order
        depth[task.id] = 1 + max((depth[d] for d in task.depends), default=0)
    rounds: dict[int, list[str]] = {}
    for task in tasks:
        rounds.setdefault(depth[task.id], []).append(task.id)
    return [rounds[k] for k in sorted(rounds)]


def compose(subject: str, level: str, project: str | None, note: str = "") -> str:
    goal, items, tasks = plan(subject, level)
    doc = Doc()
    doc.heading(f"Plan: {tx.clip(goal, 90)}", 1)
    doc.note(
        f"Rule-based plan ({OFFLINE_NOTE}): a deterministic decomposition of the request "
        f"into {len(tasks)} task(s)."
    )
    if note:
        doc.para(note)
    facts = [f"Detail level: **{level}**", f"Work items: {len(items)}", f"Tasks: {len(tasks)}"]
    if project:
        facts.insert(0, f"Project: `{project}`")
    doc.para(" · ".join(facts))
    doc.heading("Tasks")
    entries = []
    for task in tasks:
        depends = ", ".join(task.depends) if task.depends else "none"
        entries.append(
            Item(
                f"**{task.id} · {task.title}**",
                (
                    Item(f"Depends on: {depends}"),
                    Item("Acceptance criteria:", tuple(Item(c) for c in task.criteria)),
                ),
            )
        )
    doc.items(entries, ordered=True)
    doc.heading("Order of work")
    rounds = waves(tasks)
    lines = []
    for number, ids in enumerate(rounds, 1):
        when = "can start now" if number == 1 else "once the previous round is done"
        together = " (in parallel)" if len(ids) > 1 else ""
        lines.append(f"{', '.join(ids)}: {when}{together}")
    doc.items(lines, ordered=True)
    return doc.render("markdown")


def llm_messages(
    request: AgentRequest, subject: str, level: str, project: str | None
) -> list[dict[str, str]]:
    depth = {
        "low": "one task per piece of work",
        "medium": "design, build and verification tasks for each piece of work",
        "high": (
            "requirements, design, build, test and documentation tasks for each piece of "
            "work, a scope task first and a release task last"
        ),
    }[level]
    system = (
        "You are the task-planning agent of archon-chat. Decompose the user's request into "
        "an ordered markdown task list. Number the tasks T1, T2, ... so that every task "
        "comes after the tasks it depends on. For each task give a bold title, a line "
        "'Depends on:' with task ids or 'none', and 'Acceptance criteria:' as testable "
        f"bullet points. Detail level {level}: {depth}. End with the order of work, "
        "grouping tasks that can run in parallel."
    )
    if project:
        system += f" The plan belongs to project {project}."
    return [
        {"role": "system", "content": system},
        *chat_history(request),
        {
            "role": "user",
            "content": request.prompt
            if subject == request.prompt.strip()
            else f"{request.prompt}\n\n(The request to plan: {subject})",
        },
    ]
