"""Loss pieces sentence-transformers lacks; the losses themselves (MarginMSELoss, DistillKLDivLoss,
EmbedDistillLoss, MSELoss) are sentence-transformers' own, wrapped — never re-implemented.

- :mod:`embed_kd.losses.score_scale` — put teacher scores (normalised per query when the examples
  are built) on the student's range (a scale) before a score loss sees them;
- :mod:`embed_kd.losses.teacher_documents` — score distillation against frozen teacher document
  embeddings (asymmetric: only the query encoder is trained by the score loss);
- :mod:`embed_kd.losses.weighted` — a declared weight on one loss of a multi-loss run.
"""

from embed_kd.losses.score_scale import ScaledScoreLoss, scale_scores
from embed_kd.losses.teacher_documents import TeacherDocumentsLoss, gather_documents
from embed_kd.losses.weighted import WeightedLoss

__all__ = ["ScaledScoreLoss", "TeacherDocumentsLoss", "WeightedLoss", "gather_documents", "scale_scores"]
