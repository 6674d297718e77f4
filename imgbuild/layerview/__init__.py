"""Seeing inside images: the layers and what each writes (``imgbuild layers``),
dive's wasted-space figures and CI gate, image diffs (``imgbuild diff``) and
the HTML report. See docs/inspection.md."""
