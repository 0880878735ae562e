"""Where published variants live: the Hugging Face Hub, or a local registry folder with the same
layout (`<root>/<organisation>/<variant>/`, each a compressed checkpoint with scorecard.json and
README.md), which works offline and is what the tests and the demo use.

    zoo compress smollm2-135m --cr 0.2 --push              # the local registry
    zoo publish ./smollm2-135m-compot-dynamic-cr0.2 hub    # the Hub, token from HF_TOKEN
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zoo.errors import ZooError
from zoo.files import check_writable, exclusive, recover, recover_all, staged_dir, write_text
from zoo.format.checks import check_files
from zoo.publish.card import CARD, card_repo_id, read_scored, write_card
from zoo.publish.hub_errors import hub_error, write_problem
from zoo.publish.scorecard import SCORECARD, Scorecard
from zoo.publish.verdict import VERIFICATION, Verification
from zoo.sources.assets import cache_dir
from zoo.sources.catalogue import publish_settings
from zoo.sources.hub import hub_reachable

log = logging.getLogger(__name__)

REGISTRY_ENV = "COMPOT_ZOO_REGISTRY"


@dataclass(frozen=True)
class PublishedVariant:
    """One published variant as a reader sees it: where it is and how it scores."""

    repo_id: str  # "<organisation>/<variant>"
    url: str  # the Hub page, or a file:// URL into the local registry
    scorecard: Scorecard
    verification: Verification | None = None  # of this build of the variant; None: not verified

    @property
    def broken(self) -> bool:
        return self.verification is not None and self.verification.broken


def current(verification: Verification | None, scorecard: Scorecard) -> Verification | None:
    """The verdict if it is on the build the scorecard describes; one on an older build is stale."""
    return verification if verification is not None and verification.fingerprint == scorecard.fingerprint else None


class Publisher(Protocol):
    organization: str

    @property
    def registry(self) -> str:
        """What `publisher_for` takes to reach this publisher again (in another process)."""

    def check(self, variants: list[str]) -> None:
        """Fail now, with a message naming the problem, if publishing these variants cannot work."""

    def publish(self, folder: Path, variant: str) -> PublishedVariant:
        """Publish a scored checkpoint as `variant`, its card naming the repository; `folder` is only read."""

    def get(self, variant: str) -> PublishedVariant | None:
        """The published variant of this name, or None if there is none."""

    def published(self) -> list[PublishedVariant]: ...

    def download(self, variant: str, into: Path) -> Path:
        """A copy of the published files in the new folder `into`, as a reader would get them."""

    def mark(self, variant: str, verification: Verification) -> None:
        """Store the verdict on the published variant beside its scorecard."""

    def lock(self) -> AbstractContextManager:
        """Held while this process writes here: another run writing the same place is refused."""


def check_folder(folder: Path) -> Scorecard:
    """A folder is publishable when it is a scored compressed checkpoint whose files hold what its
    record says (and no links to files elsewhere)."""
    record, scorecard = read_scored(folder)
    check_files(folder, record)
    return scorecard


def _copy_with_card(folder: Path, into: Path, repo_id: str, link: bool = False) -> None:
    """`folder` copied into `into` (hard links with `link`: nothing is written through them), with
    a card naming `repo_id` when the folder's own names another repository or is missing."""

    def copy(src: str, dst: str) -> None:
        if link:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(folder, into, copy_function=copy, dirs_exist_ok=True)
    if card_repo_id(into) != repo_id:
        write_card(into, *read_scored(into), repo_id)


def check_names(organization: str, variants: list[str], kind: str) -> None:
    """Repository names the Hub accepts (a local registry keeps to them too, so it can be mirrored)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for variant in variants:
        try:
            validate_repo_id(f"{organization}/{variant}")
        except HFValidationError as exc:
            raise ZooError(f"invalid {kind} name {organization}/{variant}: {exc}") from exc


class LocalRegistry:
    """A folder laid out like the Hub: one directory per repository, replaced whole on publish."""

    def __init__(self, root: Path, organization: str) -> None:
        self.root, self.organization = Path(root).expanduser(), organization

    def __repr__(self) -> str:
        return f"local registry {self.root}"

    @property
    def registry(self) -> str:
        return str(self.root.resolve())  # absolute: a folder named "hub" is no Hub

    def check(self, variants: list[str]) -> None:
        check_names(self.organization, variants, "repository")
        check_writable(self.root / self.organization)
        for variant in variants:
            check_writable(self._dir(variant))
        with self.lock():  # another run writing it now: said before any work
            pass

    def lock(self) -> AbstractContextManager:
        return exclusive(self.root / ".lock", repr(self))

    def _dir(self, variant: str) -> Path:
        """The variant's folder; every access goes through here, so a name that would leave the
        registry (`..`, an absolute path, a symbolic link to elsewhere) is refused once for all."""
        check_names(self.organization, [variant], "repository")
        folder = self.root / self.organization / variant
        if not folder.resolve().is_relative_to(self.root.resolve()):
            raise ZooError(f"{folder} is a symbolic link to {folder.resolve()}, outside {self}: refused")
        return folder

    def publish(self, folder: Path, variant: str) -> PublishedVariant:
        """Copy under a temporary name, then swap it in: readers see the old variant or the new one."""
        check_folder(folder)
        self.check([variant])
        with self.lock(), staged_dir(self._dir(variant)) as tmp:
            _copy_with_card(folder, tmp, f"{self.organization}/{variant}")
        found = self.get(variant)
        if found is None:
            raise ZooError(f"{self._dir(variant)} holds no readable {SCORECARD} after publishing")
        return found

    def get(self, variant: str) -> PublishedVariant | None:
        recover(self._dir(variant))  # a publish killed between its renames leaves the old copy aside
        path = self._dir(variant) / SCORECARD
        if not path.is_file():
            return None
        scorecard = Scorecard.load(path)
        verdict = path.with_name(VERIFICATION)
        verification = Verification.from_json(verdict.read_text(), str(verdict)) if verdict.is_file() else None
        url = path.parent.resolve().as_uri()
        return PublishedVariant(f"{self.organization}/{variant}", url, scorecard, current(verification, scorecard))

    def download(self, variant: str, into: Path) -> Path:
        if self.get(variant) is None:
            raise ZooError(f"{self} holds no variant {variant!r}")
        return Path(shutil.copytree(self._dir(variant), into))

    def mark(self, variant: str, verification: Verification) -> None:
        if self.get(variant) is None:
            raise ZooError(f"{self} holds no variant {variant!r} to mark")
        with self.lock():
            write_text(self._dir(variant) / VERIFICATION, verification.to_json())

    def published(self) -> list[PublishedVariant]:
        """Every readable variant; one with a corrupt scorecard is skipped with a warning naming it."""
        if not self.root.is_dir():
            raise ZooError(f"there is no {self}: check the path, or publish a variant there first")
        root = self.root / self.organization
        if not root.is_dir():
            return []
        recover_all(root)
        variants = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                found = self.get(folder.name)
            except ZooError as exc:
                log.warning("skipping %s: %s", folder, exc)
                continue
            if found is not None:
                variants.append(found)
        return variants


def _unreachable(exc: Exception, what: str) -> ZooError:
    return ZooError(
        f"the Hugging Face Hub is unreachable ({type(exc).__name__}): cannot {what}: check the network, "
        "or HF_ENDPOINT, and run again"
    )


class HubPublisher:
    """The Hugging Face Hub through huggingface_hub: create_repo, then upload_folder, retried with
    backoff on transient failures. The token comes from the environment (HF_TOKEN) or the login
    cache, and is never printed or written anywhere."""

    def __init__(
        self,
        organization: str,
        private: bool = False,
        retries: int = 4,
        backoff: float = 2.0,
        allow_offline_scores: bool = False,
    ) -> None:
        from huggingface_hub import HfApi

        self.organization, self.private = organization, private
        self.retries, self.backoff = retries, backoff
        self.allow_offline_scores = allow_offline_scores
        self.api = HfApi()

    def __repr__(self) -> str:
        return f"the Hugging Face Hub ({self.organization})"

    @property
    def registry(self) -> str:
        return f"hub:{self.organization}"

    def lock(self) -> AbstractContextManager:
        return nullcontext()  # each Hub commit is atomic; two runs' commits follow one another

    def check(self, variants: list[str]) -> None:
        """Before any work: the token can write to the organisation (its role and the user's role in
        the organisation, from `whoami`), and each repository is created now, empty, with the asked
        visibility (as transformers' Trainer does before training): only a write proves a token can
        write, and a name taken by a repository that is no compot-zoo variant is refused."""
        from huggingface_hub import get_token

        check_names(self.organization, variants, "Hub repository")
        if not get_token():
            raise ZooError(
                "publishing to the Hub needs a token: set HF_TOKEN (a write token for "
                f"{self.organization}) or run `hf auth login`"
            )
        problem = write_problem(self._retry(self.api.whoami, "check the token", cache=True), self.organization)
        if problem:
            raise ZooError(problem)
        for variant in variants:
            self._claim(f"{self.organization}/{variant}")

    def _claim(self, repo_id: str) -> None:
        """Create `repo_id`; one that exists must be a compot-zoo variant (or empty) to be replaced."""
        from huggingface_hub.errors import HfHubHTTPError

        what = f"create {repo_id}"
        try:
            self._call(self.api.create_repo, what, repo_id, private=self.private, repo_type="model")
        except HfHubHTTPError as exc:
            if exc.response.status_code != 409:
                raise hub_error(exc, what, self.organization, self.retries) from exc
            files = set(self._retry(self.api.list_repo_files, f"read {repo_id}", repo_id))
            if SCORECARD not in files and files - {".gitattributes", CARD}:
                raise ZooError(
                    f"the Hub answered HTTP 409 to {what}: {repo_id} exists and holds no compot-zoo variant "
                    f"(no {SCORECARD}): publish under another name (--out), or delete that repository"
                ) from exc

    def _retry(self, call, what: str, *args, **kwargs):
        """`_call`, with the Hub's HTTP errors as one-line ZooErrors naming the status and what to do."""
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return self._call(call, what, *args, **kwargs)
        except HfHubHTTPError as exc:
            raise hub_error(exc, what, self.organization, self.retries) from exc
        except ValueError as exc:  # the Hub refused a card's metadata (huggingface_hub's ValueError from a 400)
            if isinstance(exc.__cause__, HfHubHTTPError):
                raise hub_error(exc, what, self.organization, self.retries) from exc
            raise

    def _wait(self, state) -> float:
        """Exponential backoff, and at least until a 429's rate limit resets (capped at a minute)."""
        from huggingface_hub.utils import parse_ratelimit_headers

        wait = self.backoff * 2 ** (state.attempt_number - 1)
        response = getattr(state.outcome.exception(), "response", None)
        info = parse_ratelimit_headers(response.headers) if response is not None else None
        return min(60.0, max(wait, info.reset_in_seconds if info is not None else 0.0))

    def _call(self, call, what: str, *args, **kwargs):
        """Call, retrying 5xx and 429 answers with backoff; others fail at once, as huggingface_hub
        raised them. A Hub that cannot be reached at all is a ZooError at once: huggingface_hub
        already retried the connection, and stacking our retries on its own only makes a user wait."""
        if not hub_reachable():
            raise ZooError(f"the Hugging Face Hub is unreachable (no network, or HF_HUB_OFFLINE): cannot {what}")
        from huggingface_hub.errors import HfHubHTTPError
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, HfHubHTTPError) and exc.response is not None:
                return exc.response.status_code >= 500 or exc.response.status_code == 429
            return False

        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.retries),
                reraise=True,
                wait=self._wait,
                retry=retry_if_exception(transient),
                before_sleep=lambda state: log.warning(
                    "%s failed (%s), retrying", what, type(state.outcome.exception()).__name__
                ),
            ):
                with attempt:
                    return call(*args, **kwargs)
        except (ConnectionError, TimeoutError) as exc:
            raise _unreachable(exc, what) from exc
        except Exception as exc:
            # huggingface_hub's HTTP client (httpx, or httpx2 in 2.x) raises a TransportError when it
            # cannot connect; matched by name so either client works.
            if any(c.__name__ == "TransportError" for c in type(exc).__mro__):
                raise _unreachable(exc, what) from exc
            raise

    def publish(self, folder: Path, variant: str) -> PublishedVariant:
        """Upload, unless every metric of the scorecard is an offline stand-in: a public card is
        read as the model's quality, and stand-ins only compare the variant with its base."""
        scorecard = check_folder(folder)
        if scorecard.stand_in_only and not self.allow_offline_scores:
            tasks = ", ".join(sorted({m.task for m in scorecard.metrics})) or "none"
            raise ZooError(
                f"{folder} was scored only on offline stand-ins ({tasks}), not on a real benchmark: score it "
                "where the Hub is reachable, or publish anyway with --allow-offline-scores (its card says so)"
            )
        self.check([variant])  # the token, and the repository created (or a variant's, to replace)
        repo_id = f"{self.organization}/{variant}"
        with self._upload_copy(folder, repo_id) as upload:
            self._retry(
                self.api.upload_folder,
                f"upload {repo_id}",
                repo_id=repo_id,
                folder_path=str(upload),
                repo_type="model",
                commit_message=f"compot-zoo: {variant} ({scorecard.fingerprint})",
                ignore_patterns=[".*"],
                delete_patterns=[VERIFICATION],  # a verdict on the build this one replaces
            )
        return PublishedVariant(repo_id, f"{self.api.endpoint}/{repo_id}", scorecard)

    @contextmanager
    def _upload_copy(self, folder: Path, repo_id: str) -> Iterator[Path]:
        """The folder itself when its card names `repo_id`, else a hard-linked copy with such a card."""
        if card_repo_id(folder) == repo_id:
            yield folder
            return
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.upload-") as tmp:
            _copy_with_card(folder, Path(tmp) / folder.name, repo_id, link=True)
            yield Path(tmp) / folder.name

    def _repo_id(self, variant: str) -> str:
        check_names(self.organization, [variant], "Hub repository")
        return f"{self.organization}/{variant}"

    def _file(self, repo_id: str, filename: str) -> Path | None:
        """A file of a Hub repository, downloaded; None when the repository or the file is missing."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

        what = f"read {repo_id}/{filename}"
        try:
            return Path(self._call(hf_hub_download, what, repo_id, filename, endpoint=self.api.endpoint))
        except (EntryNotFoundError, RepositoryNotFoundError):
            return None
        except HfHubHTTPError as exc:
            raise hub_error(exc, what, self.organization, self.retries) from exc

    def get(self, variant: str) -> PublishedVariant | None:
        repo_id = self._repo_id(variant)
        path = self._file(repo_id, SCORECARD)
        if path is None:
            return None
        scorecard = Scorecard.load(path)
        verdict = self._file(repo_id, VERIFICATION)
        verification = (
            None if verdict is None else Verification.from_json(verdict.read_text(), f"{repo_id}/{VERIFICATION}")
        )
        return PublishedVariant(repo_id, f"{self.api.endpoint}/{repo_id}", scorecard, current(verification, scorecard))

    def download(self, variant: str, into: Path) -> Path:
        from huggingface_hub import snapshot_download

        repo_id = self._repo_id(variant)
        self._retry(snapshot_download, f"download {repo_id}", repo_id, local_dir=into, endpoint=self.api.endpoint)
        return into

    def mark(self, variant: str, verification: Verification) -> None:
        repo_id = self._repo_id(variant)
        self._retry(
            self.api.upload_file,
            f"mark {repo_id}",
            path_or_fileobj=verification.to_json().encode(),
            path_in_repo=VERIFICATION,
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"compot-zoo: {variant} {verification.status} ({verification.fingerprint})",
        )

    def published(self) -> list[PublishedVariant]:
        models = self._retry(lambda: list(self.api.list_models(author=self.organization)), "list models")
        names = [m.id.split("/", 1)[1] for m in models]
        return [v for v in map(self.get, names) if v is not None]


def publisher_for(
    registry: str | None,
    organization: str | None = None,
    private: bool | None = None,
    allow_offline_scores: bool = False,
) -> Publisher:
    """ "hub" (or "hub:ORG") is the Hugging Face Hub; anything else a local registry path; None the
    default registry ($COMPOT_ZOO_REGISTRY, else the cache's registry/). The organisation and
    private flag default to the zoo catalogue's [publish] table. The Hub takes a scorecard of
    offline stand-ins only with `allow_offline_scores`; a local registry takes anything."""
    settings = publish_settings()
    if registry is not None and (registry == "hub" or registry.startswith("hub:")):
        org = registry.partition(":")[2] or organization or settings.get("organization")
        if not org:
            raise ZooError("publishing to the Hub needs an organisation: hub:ORG or [publish] organization")
        visibility = settings.get("private", False) if private is None else private
        return HubPublisher(org, visibility, allow_offline_scores=allow_offline_scores)
    root = Path(registry) if registry else Path(os.environ.get(REGISTRY_ENV) or cache_dir() / "registry")
    if root.exists() and not root.is_dir():
        raise ZooError(f"local registry {root} exists and is not a directory")
    return LocalRegistry(root, organization or settings.get("organization", "local"))
