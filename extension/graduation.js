// persona.graduated: the Academy's word that a persona's new level joined its stack.
//
// Anybody with bus.publish may publish on any topic, so the topic proves
// nothing: only the publisher the bus stamps on the event does. We act on
// academy:main's events alone, and check their data as
// protocol/commands/academy.py's GraduatedEvent, with the bounds its values
// come from (Rules' name and domain, the adapter name and hash patterns of
// protocol/commands/inference.py, the run id of EvolutionRecordParams), so
// that a faulty Academy cannot put a page of text or a spoofing control
// character in front of the person either. tests/e2e/test_extension_graduation.py
// checks the patterns here equal the Python ones.

export const GRADUATED_TOPIC = "persona.graduated";
export const ACADEMY_CLIENT = "academy:main";

export const PERSONA_ID_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const ADAPTER_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,31}(\.[a-z0-9][a-z0-9_-]{0,31}){0,7}$/;
export const SHA256_RE = /^[0-9a-f]{64}$/;
export const RUN_ID_RE = /^run-[0-9a-f]{12}$/;
export const MAX_PERSONA_NAME_CHARS = 128;
export const MAX_DOMAIN_CHARS = 200;

const FIELDS = ["persona_id", "persona_name", "domain", "adapter", "sha256", "pass_before", "pass_after", "run_id"];
// C0/C1 controls and the bidi embeddings, overrides and isolates: a name
// holding U+202E would show its tail reversed, e.g. a fake score.
const UNSAFE_CHARS_RE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/u;

/** Raised for data that is not a GraduatedEvent; `field` names the member at fault. */
export class BadGraduation extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

function text(data, field, maxChars) {
  const value = data[field];
  if (typeof value !== "string" || value.trim().length === 0 || value.length > maxChars) {
    throw new BadGraduation(field, `must be a string of 1 to ${maxChars} characters`);
  }
  if (UNSAFE_CHARS_RE.test(value)) throw new BadGraduation(field, "must hold no control or bidi characters");
  return value.trim();
}

function matching(data, field, pattern) {
  const value = data[field];
  if (typeof value !== "string" || !pattern.test(value)) throw new BadGraduation(field, `must match ${pattern.source}`);
  return value;
}

function fraction(data, field) {
  const value = data[field];
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new BadGraduation(field, "must be a number from 0 to 1");
  }
  return value;
}

/** The event's data as a GraduatedEvent, or BadGraduation. */
export function checkGraduated(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new BadGraduation("data", "must be an object (a GraduatedEvent)");
  }
  for (const key of Object.keys(data)) {
    // GraduatedEvent is a StrictModel: an unknown member is an error there too.
    if (!FIELDS.includes(key)) throw new BadGraduation(key.slice(0, 64), "is not a member of GraduatedEvent");
  }
  return {
    persona_id: matching(data, "persona_id", PERSONA_ID_RE),
    persona_name: text(data, "persona_name", MAX_PERSONA_NAME_CHARS),
    domain: text(data, "domain", MAX_DOMAIN_CHARS),
    adapter: matching(data, "adapter", ADAPTER_NAME_RE),
    sha256: matching(data, "sha256", SHA256_RE),
    pass_before: fraction(data, "pass_before"),
    pass_after: fraction(data, "pass_after"),
    run_id: matching(data, "run_id", RUN_ID_RE),
  };
}

function percent(value) {
  return `${Math.round(value * 100)}%`;
}

/** What the person sees: chrome.notifications options (plain text only) and an id per run. */
export function graduationNotice(event) {
  return {
    // One notification per run: a repeated event replaces it rather than stacking.
    id: `personad-graduated-${event.run_id}`,
    title: `${event.persona_name} graduated`,
    message: `${event.domain}: ${percent(event.pass_before)} → ${percent(event.pass_after)} on the Academy exam`,
    contextMessage: `new level ${event.adapter} (${event.run_id})`,
  };
}
