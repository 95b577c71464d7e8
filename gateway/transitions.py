"""What to do next with something sent to a bank: one pure function for batches, refunds and disputes.

A batch (BP01 / pain.001), a refund (RF01) and a dispute (DP01) go through the same
exchange: it is submitted, the bank answers (or does not), and, when the outcome is not
known, the bank is asked (BQ01 / RQ01) before anything is sent again (domain.md rule 3).
The decision is taken here, from the bank's verified answer and the phase the thing is in;
the steps in gateway/flow.py, refund_flow.py and article26.py carry it out in their own
tables. Nothing here reads a clock, a table or a socket, so every input an adapter can
produce is tested as a table (tests/test_transitions.py).

    after_submit(outcome)            the bank's reply to a submission
    after_status(phase, answer)      the bank's answer to a status question
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from adapters.interface import BankAnswer, Outcome

class Phase(StrEnum):
    """Where the thing stands when the bank is asked about it."""

    SUBMITTING = "SUBMITTING"   # sent (journaled), whether the bank took it is unknown
    ACCEPTED = "ACCEPTED"       # the bank holds it
    DONE = "DONE"               # finished; a batch is still asked for late returns (退票)


class Next(StrEnum):
    """The step that follows."""

    ACCEPT = "accept"           # the bank holds it: record the acceptance
    SEND_LATER = "send_later"   # nothing was taken: back to be sent, after a backoff
    REFUSE = "refuse"           # refused for good: its items go back, an operator is told
    ASK_LATER = "ask_later"     # no usable answer: ask again after a backoff
    SEND_AGAIN = "send_again"   # the bank never got it: it may be submitted again now
    FORGOTTEN = "forgotten"     # the bank denies what it had accepted: critical alarm, ask later
    WAIT = "wait"               # in the bank's hands: ask again at the usual interval
    FINISH = "finish"           # done: take the results
    REJECT = "reject"           # rejected whole: nothing was paid
    RETURNS = "returns"         # a finished batch: apply the late returns the answer lists


@dataclass(frozen=True)
class Transition:
    then: Next
    accepted_first: bool = False   # the answer shows the bank took it: record that first
    alarm: bool = False            # ASK_LATER after a refusal nobody else alarms (status-refused)


def after_submit(outcome: Outcome | str) -> Transition:
    """The bank's verified reply to a submission (an exchange without one is no reply: the
    thing stays SUBMITTING and is asked about, never sent blind)."""
    outcome = Outcome(outcome)
    if outcome is Outcome.ACCEPTED:
        return Transition(Next.ACCEPT)
    if outcome in (Outcome.RETRY, Outcome.UNSENT):
        return Transition(Next.SEND_LATER)
    return Transition(Next.REFUSE)


def after_status(phase: Phase | str, answer: BankAnswer | str, *, alarmed: bool = False) -> Transition:
    """The bank's verified answer to a status question about something in `phase`; `alarmed`:
    the adapter holds an alarm episode of its own for a refusal (BatchStatus.alarmed)."""
    phase, answer = Phase(phase), BankAnswer(answer)
    if answer is BankAnswer.UNANSWERED:
        return Transition(Next.ASK_LATER, alarm=not alarmed)
    if answer is BankAnswer.UNKNOWN_TO_BANK:
        # Rule 3: only what the bank says it never received may go again, and only if we did
        # not already hold its acceptance.
        return Transition(Next.SEND_AGAIN if phase is Phase.SUBMITTING else Next.FORGOTTEN)
    first = phase is Phase.SUBMITTING
    if phase is Phase.DONE:
        return Transition(Next.RETURNS)
    if answer is BankAnswer.REJECTED:
        return Transition(Next.REJECT, accepted_first=first)
    if answer is BankAnswer.DONE:
        return Transition(Next.FINISH, accepted_first=first)
    return Transition(Next.WAIT, accepted_first=first)
