"""Score calculation on demand, with the same rules the workflows use."""

from fastapi import APIRouter

from api.deps import ActorDep
from api.errors import ErrorBody
from nurture.models import utcnow
from nurture.scoring import ScoreResult, ScoringInput, score

router = APIRouter(prefix="/api/v1/scoring", tags=["scoring"])


@router.post(
    "/calculate",
    response_model=ScoreResult,
    responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def calculate_score(data: ScoringInput, _actor: ActorDep) -> ScoreResult:
    """Score a lead from 0 to 100 from its facts, with each dimension and reason."""
    return score(data, utcnow())
