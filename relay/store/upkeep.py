"""The outbox's periodic upkeep: what the daemon prunes while it runs.

The recent history is kept ``history.keep_h`` hours and at most ``history.max_events``
records. Webhook keys (``relay.store.once``) are kept ``webhooks.dedup_keep_h`` hours and at most
``webhooks.dedup_max_keys``; once a minute the older ones, and past the bound the oldest,
are deleted in a short transaction of the writer. A failure is logged and tried again at
the next round: upkeep never stops the relay.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from relay.config import HistorySettings, WebhookSettings
from relay.store.outbox import Outbox
from relay.store.writer import OutboxClosed, OutboxUnavailable

logger = structlog.get_logger(__name__)

UPKEEP_INTERVAL_S = 60.0
# The shortest deduplication window promised: GitHub's manual redelivery and GitLab's
# retries come within a day.
MIN_DEDUP_WINDOW_S = 24 * 3600.0


async def upkeep(
    outbox: Outbox,
    webhooks: WebhookSettings,
    history: HistorySettings,
    interval_s: float = UPKEEP_INTERVAL_S,
) -> None:
    """Prune the webhook keys and the history every ``interval_s``, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await prune_once(outbox, webhooks)
        await prune_history_once(outbox, history)


async def prune_history_once(outbox: Outbox, settings: HistorySettings) -> None:
    """One round of history upkeep: the drain's copies compacted, then the records older
    than ``keep_h`` or past ``max_events`` deleted."""
    try:
        await outbox.compact_history()
        deleted = await outbox.prune_history(
            settings.keep_h * 3600, settings.max_events, time.time()
        )
    except Exception as exc:
        # Upkeep must never stop the relay; a failed round is tried again at the next.
        logger.warning("history not pruned; trying again later", error=repr(exc), exc_info=True)
        return
    if deleted:
        logger.debug("history pruned", deleted=deleted)


async def prune_once(outbox: Outbox, settings: WebhookSettings) -> None:
    """One round of pruning, its outcome logged."""
    try:
        pruned = await outbox.prune_webhook_keys(
            settings.dedup_keep_h * 3600, settings.dedup_max_keys, time.time()
        )
    except (OutboxUnavailable, OutboxClosed) as exc:
        logger.warning("webhook keys not pruned; trying again later", error=str(exc))
        return
    except Exception as exc:
        # Upkeep must never stop the relay; a bug here is logged at each round with its trace.
        logger.warning(
            "webhook keys not pruned; trying again later", error=repr(exc), exc_info=True
        )
        return
    if pruned.bound_age_s is not None and pruned.bound_age_s < MIN_DEDUP_WINDOW_S:
        logger.warning(
            "webhook keys pruned before 24 hours: a redelivery after that may be stored again",
            window_h=round(pruned.bound_age_s / 3600, 1),
            max_keys=settings.dedup_max_keys,
            hint="raise webhooks.dedup_max_keys",
        )
    elif pruned.deleted:
        logger.debug("webhook keys pruned", deleted=pruned.deleted)
