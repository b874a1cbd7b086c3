"""Stage 4a — building dense students: layer cuts of the teacher, narrow configs + projection, presets."""

from embed_kd.students.build import StudentSpec, build_student, cut_layers, narrow_student, with_projection

__all__ = ["StudentSpec", "build_student", "cut_layers", "narrow_student", "with_projection"]
