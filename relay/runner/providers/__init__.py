"""Which CI system a job runs on, and what its environment says; in one fixed order."""

from __future__ import annotations

from relay.runner.facts import CIFacts
from relay.runner.providers import azure, bitbucket, buildkite, circleci, github, gitlab, jenkins
from relay.runner.providers.common import Env, Provider

# The order in which markers are checked. JENKINS_URL comes last: it is a plain URL that
# other systems' hosts sometimes export, while the others' markers are their own.
PROVIDERS: tuple[Provider, ...] = (
    github.PROVIDER,
    gitlab.PROVIDER,
    buildkite.PROVIDER,
    circleci.PROVIDER,
    azure.PROVIDER,
    bitbucket.PROVIDER,
    jenkins.PROVIDER,
)
GENERIC = "generic"
NAMES = (*(provider.name for provider in PROVIDERS), GENERIC)


def detect(env: Env, forced: str | None = None) -> CIFacts:
    """The facts of the first provider whose marker is in ``env`` (or of ``forced``).

    With no marker, or ``forced`` as ``generic``, nothing is read from the environment:
    flags, ``DD_GIT_*`` and the checkout give everything.
    """
    for provider in PROVIDERS:
        if provider.name == forced or (forced is None and provider.detected(env)):
            return provider.read(env)
    return CIFacts(provider=GENERIC)
