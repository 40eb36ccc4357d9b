//! The in-flight window of one client's requests.

/// How many of a client's requests may be in flight at once, by the size
/// of its replies: a client whose replies are big gets few requests in
/// flight, so that what it asked for cannot occupy a shard's shared
/// connection for long (every reply is read in order, other clients' behind
/// it). It starts at [`Window::INITIAL`] and grows by one per reply while
/// the replies in flight would stay under [`Window::BUDGET`] (doubling per
/// round trip, as TCP's slow start: a pipeline of small replies reaches
/// `--max-pipeline` within a few round trips); a big reply shrinks it to
/// what fits the budget (at least one).
pub(super) struct Window {
    size: usize,
}

impl Window {
    const INITIAL: usize = 8;
    const BUDGET: usize = 16 << 20;

    pub(super) fn new() -> Window {
        Window {
            size: Window::INITIAL,
        }
    }

    /// The in-flight limit under `max_pipeline`.
    pub(super) fn limit(&self, max_pipeline: usize) -> usize {
        self.size.clamp(1, max_pipeline.max(1))
    }

    /// A reply of `bytes` arrived.
    pub(super) fn replied(&mut self, bytes: usize) {
        let fits = Window::BUDGET / bytes.max(1);
        if fits > self.size {
            // Grow; capped far above any `--max-pipeline` (the limit clamps).
            self.size = (self.size + 1).min(1 << 20);
        } else {
            self.size = fits.max(1);
        }
    }
}
