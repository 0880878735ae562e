"""What a Hub answer means to the person publishing: one line naming the HTTP status and what to do,
never huggingface_hub's multi-line exception. And whether a token can write to an organisation,
read from `whoami` as the Hub reports it (the token's role, or its fine-grained scopes, and the
user's role in the organisation)."""

from __future__ import annotations

from zoo.errors import ZooError

TOKENS_PAGE = "https://huggingface.co/settings/tokens"
WRITE_ROLES = {"admin", "write", "contributor"}  # roles in an organisation that may create repositories


def _advice(status: int, organization: str, tries: int) -> str:
    """What to do about a Hub answer, by status."""
    if status >= 500:
        return f"the Hub is unavailable after {tries} tries: try again later"
    return {
        400: "the Hub refused the request as malformed: fix what its message names",
        401: f"the token is invalid or expired: set HF_TOKEN to a valid write token ({TOKENS_PAGE})",
        403: (
            f"the token cannot write to {organization}: use a write token (or a fine-grained one with repo.write "
            f"on {organization}) of an account with the write role in {organization}"
        ),
        404: f"no organisation or repository of that name, or the token cannot see it: check the organisation "
        f"({organization})",
        409: "the name is taken by a conflicting repository or upload: publish under another name (--out), "
        "or again once the other upload is done",
        429: f"the Hub rate-limited it {tries} times: wait for the limit to reset, then run again",
    }.get(status, "see the Hub's message")


def _server_message(exc: Exception) -> str:
    """The first line of what the Hub said, short; empty when it said nothing."""
    said = getattr(exc, "server_message", None) or getattr(exc.__cause__, "server_message", None)  # whoami re-raises
    message = (said or "").strip().splitlines()
    return f" ({message[0][:160]})" if message else ""


def _reset_note(exc: Exception) -> str:
    """When a 429's rate limit resets, as the Hub's RateLimit header says."""
    from huggingface_hub.utils import parse_ratelimit_headers

    info = parse_ratelimit_headers(exc.response.headers)
    return f"; it resets in {info.reset_in_seconds} s" if info is not None else ""


def hub_error(exc: Exception, what: str, organization: str, tries: int) -> ZooError:
    """A one-line ZooError for a Hub HTTP error (an HfHubHTTPError, or the ValueError huggingface_hub
    raises when the Hub refuses a card's metadata, chained to the 400)."""
    if isinstance(exc, ValueError):  # "Invalid metadata in README.md.\n- ...": the card's metadata
        problems = "; ".join(line.lstrip("- ") for line in str(exc).splitlines()[1:] if line.strip())
        return ZooError(f"the Hub answered HTTP 400 to {what}: the card's metadata is invalid ({problems})")
    status = exc.response.status_code
    reset = _reset_note(exc) if status == 429 else ""
    return ZooError(
        f"the Hub answered HTTP {status} to {what}{_server_message(exc)}: {_advice(status, organization, tries)}{reset}"
    )


def _token_scopes_write(token: dict, organization: str) -> bool:
    """A fine-grained token writes where one of its scopes on the organisation (or user) has repo.write."""
    scoped = (token.get("fineGrained") or {}).get("scoped") or []
    return any(
        s.get("entity", {}).get("name") == organization and "repo.write" in s.get("permissions", []) for s in scoped
    )


def write_problem(user: dict, organization: str) -> str | None:
    """Why the token `whoami` describes cannot publish to `organization`, or None when it can. Fields
    the Hub leaves out (an OAuth token has no role) are not held against it: the upload will tell."""
    name = user.get("name")
    roles = {o.get("name"): o.get("roleInOrg") for o in user.get("orgs", [])}
    if organization != name and organization not in roles:
        members = ", ".join(sorted(o for o in [name, *roles] if o))
        return (
            f"the token's user {name!r} cannot publish to {organization!r}: no such organisation, or the user is "
            f"not a member (it can publish to {members})"
        )
    token = (user.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    if role == "read":
        return f"the token is read-only (role read): publishing to {organization} needs a write token ({TOKENS_PAGE})"
    if role == "fineGrained" and not _token_scopes_write(token, organization):
        return (
            f"the fine-grained token has no repo.write permission on {organization}: add it to the token "
            f"({TOKENS_PAGE}) or use a write token"
        )
    org_role = roles.get(organization)
    if organization != name and org_role is not None and org_role not in WRITE_ROLES:
        return (
            f"the user {name!r} has the {org_role} role in {organization}, which cannot create repositories: "
            "ask an admin of the organisation for the write role"
        )
    return None
