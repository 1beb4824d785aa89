# The golden vector set's fixtures (program, images, golden) for the vectors tests of this folder; a test
# module's own fixture of the same name takes precedence.
from support.vector_sets import golden, images, program  # noqa: F401
