"""The submit -> ask -> accept/reject/resend decision (gateway/transitions.py), as a table.

Every reply and every answer an adapter can give (adapters.interface.Outcome and
BankAnswer), in every phase, against what domain.md asks: rule 3 (nothing is sent again
unless the bank says it never received it, and only while its acceptance is not known),
an answer that shows the bank holds something recorded as accepted first, a refusal alarmed
by the flow unless the adapter holds an episode of its own. The steps that carry the
decision out are tested end to end elsewhere (tests/test_rules_flow.py, the stateful test).
"""

from __future__ import annotations

import itertools

import pytest

from adapters.interface import BankAnswer, BatchStatus, Outcome, RefundStatus, Reply
from gateway.transitions import Next, Phase, Transition, after_status, after_submit

SUBMIT = {
    Outcome.ACCEPTED: Transition(Next.ACCEPT),
    Outcome.RETRY: Transition(Next.SEND_LATER),
    Outcome.UNSENT: Transition(Next.SEND_LATER),
    Outcome.REFUSED: Transition(Next.REFUSE),
}

S, A, D = Phase.SUBMITTING, Phase.ACCEPTED, Phase.DONE
STATUS = {
    (S, BankAnswer.UNKNOWN_TO_BANK): Transition(Next.SEND_AGAIN),
    (A, BankAnswer.UNKNOWN_TO_BANK): Transition(Next.FORGOTTEN),
    (D, BankAnswer.UNKNOWN_TO_BANK): Transition(Next.FORGOTTEN),
    (S, BankAnswer.PENDING): Transition(Next.WAIT, accepted_first=True),
    (A, BankAnswer.PENDING): Transition(Next.WAIT),
    (D, BankAnswer.PENDING): Transition(Next.RETURNS),
    (S, BankAnswer.REJECTED): Transition(Next.REJECT, accepted_first=True),
    (A, BankAnswer.REJECTED): Transition(Next.REJECT),
    (D, BankAnswer.REJECTED): Transition(Next.RETURNS),
    (S, BankAnswer.DONE): Transition(Next.FINISH, accepted_first=True),
    (A, BankAnswer.DONE): Transition(Next.FINISH),
    (D, BankAnswer.DONE): Transition(Next.RETURNS),
    (S, BankAnswer.UNANSWERED): Transition(Next.ASK_LATER, alarm=True),
    (A, BankAnswer.UNANSWERED): Transition(Next.ASK_LATER, alarm=True),
    (D, BankAnswer.UNANSWERED): Transition(Next.ASK_LATER, alarm=True),
}


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_reply_to_a_submission(outcome):
    assert after_submit(outcome) == SUBMIT[outcome]
    assert after_submit(outcome.value) == SUBMIT[outcome]     # what an adapter may pass


@pytest.mark.parametrize("phase,answer", list(itertools.product(Phase, BankAnswer)))
def test_every_status_answer_in_every_phase(phase, answer):
    assert after_status(phase, answer) == STATUS[(phase, answer)]


def test_the_table_covers_every_input():
    assert set(STATUS) == set(itertools.product(Phase, BankAnswer))
    assert set(SUBMIT) == set(Outcome)


def test_rule_3_only_what_the_bank_never_received_goes_again_and_only_before_its_acceptance():
    """No path sends anything again without the bank's word that it never had it: after a
    submission only a reply that nothing was taken does (SEND_LATER), after a question only
    "unknown to the bank" for something whose submission's outcome was unknown."""
    again = [(p, a) for p, a in itertools.product(Phase, BankAnswer)
             if after_status(p, a).then is Next.SEND_AGAIN]
    assert again == [(Phase.SUBMITTING, BankAnswer.UNKNOWN_TO_BANK)]
    assert {o for o in Outcome if after_submit(o).then is Next.SEND_LATER} == {Outcome.RETRY, Outcome.UNSENT}


def test_an_answer_about_a_submission_shows_the_bank_took_it():
    for answer in (BankAnswer.PENDING, BankAnswer.REJECTED, BankAnswer.DONE):
        assert after_status(Phase.SUBMITTING, answer).accepted_first
        assert not after_status(Phase.ACCEPTED, answer).accepted_first


def test_a_refusal_the_adapter_alarms_itself_is_not_alarmed_twice():
    for phase in Phase:
        assert after_status(phase, BankAnswer.UNANSWERED, alarmed=True) == Transition(Next.ASK_LATER)
        assert after_status(phase, BankAnswer.UNANSWERED, alarmed=False).alarm


def test_adapters_answers_are_checked_when_made():
    """An adapter that returns a word outside the contract fails where it made it, not in the flow."""
    assert Reply("accepted").outcome is Outcome.ACCEPTED
    assert BatchStatus("done").state is BankAnswer.DONE
    assert RefundStatus("pending").state is BankAnswer.PENDING
    for bad in (lambda: Reply("unknown"), lambda: BatchStatus("paid"), lambda: RefundStatus("")):
        with pytest.raises(ValueError):
            bad()
