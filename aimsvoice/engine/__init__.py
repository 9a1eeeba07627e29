"""The PersonaPlex engine: model loading (moshi), persona conditioning and the step loop."""
