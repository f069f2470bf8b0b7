//! Strict first-in-first-out.
//!
//! Jobs start in submission order; the oldest waiting job that does not fit
//! blocks every job behind it, even ones that would fit (no backfilling).
//! That head-of-line blocking is what defines FIFO and what smarter
//! policies are measured against. Suspended jobs (left by a previous
//! policy after a hot swap) wait in the same queue by submission order.

mod policy;

pub use policy::Fifo;
use wsched_sdk::*;

export_policy!(Fifo);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::FakeView;

    #[test]
    fn head_of_line_blocking() {
        let mut view = FakeView::new(4, 4);
        let running = view.add_job(2).id;
        view.place(running, &[0, 1], 1.0);
        let big = view.add_job(4);
        let small = view.add_job(1);
        let mut fifo = Fifo::init("").unwrap().0;
        let d = fifo.decide(&view, vec![Event::JobArrived(big.clone()), Event::JobArrived(small)]);
        assert!(d.actions.is_empty(), "the 4-GPU head blocks the 1-GPU job behind it");

        view.finish(running);
        let d = fifo.decide(&view, vec![Event::JobFinished(running)]);
        let starts: Vec<JobId> = d
            .actions
            .iter()
            .filter_map(|a| if let Action::Start(p) = a { Some(p.job) } else { None })
            .collect();
        assert_eq!(
            starts,
            vec![big.id],
            "the head starts first; the small job waits for room"
        );
    }

    #[test]
    fn refuses_configuration() {
        assert!(Fifo::init("x=1").is_err());
        assert!(Fifo::init("").is_ok());
    }
}
