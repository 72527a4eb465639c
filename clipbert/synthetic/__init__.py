"""The synthetic world: two-event moving-shape videos with ClipBERT-format annotations, and captioned stills.

Modules: the attribute vocabulary and caption templates (vocabulary), scene specs and drawing them (world),
rendering frames (render) and their pixel formats (pixels), encoding with PyAV (encode), annotations
(annotations), the video corpus on disk (corpus: synthesize_corpus, load_corpus) and the captioned stills
(stills: synthesize_images). Import from the modules themselves: importing the package loads none of them, so the
vocabulary stays cheap to import.
"""
