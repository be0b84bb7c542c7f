//! Paired differences over seeds: method B − method A on every seed both ran, their mean, its
//! standard error and how many seeds agree with the mean's sign. A difference is called a
//! difference only when |mean| ≥ 2 standard errors (with at least two seeds).

/// B − A over the seeds both ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Seeds in both.
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation of the differences / √n; `None` with fewer than two seeds.
    pub se: Option<f64>,
    /// Seeds whose difference has the mean's sign (a zero difference agrees with neither).
    pub agree: usize,
}

impl Paired {
    /// The differences `b − a` of the seeds present in both (by seed, in `a`'s order); `None`
    /// when no seed is in both or a difference is not finite.
    pub fn of(a: &[(u64, f64)], b: &[(u64, f64)]) -> Option<Self> {
        let d: Vec<f64> = a
            .iter()
            .filter_map(|(seed, x)| b.iter().find(|(s, _)| s == seed).map(|(_, y)| y - x))
            .collect();
        if d.is_empty() || d.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let se = (d.len() > 1).then(|| {
            let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (var / n).sqrt()
        });
        let agree = d
            .iter()
            .filter(|x| x.signum() == mean.signum() && **x != 0.0)
            .count();
        Some(Self {
            n: d.len(),
            mean,
            se,
            agree,
        })
    }

    /// Whether the mean difference is at least two standard errors from zero.
    pub fn distinguishable(&self) -> bool {
        self.se
            .is_some_and(|se| self.mean.abs() >= 2.0 * se && self.mean != 0.0)
    }

    /// "+0.0123 ± 0.0040 (3 seeds, 3 agree in sign): higher", "... not distinguishable from
    /// noise", or with one seed "+0.0123 (one seed: no error bar)", with `digits` decimals.
    pub fn describe(&self, digits: usize) -> String {
        let Some(se) = self.se else {
            return format!("{:+.digits$} (one seed: no error bar)", self.mean);
        };
        let verdict = if !self.distinguishable() {
            "not distinguishable from noise"
        } else if self.mean > 0.0 {
            "higher"
        } else {
            "lower"
        };
        format!(
            "{:+.digits$} ± {se:.digits$} ({} seeds, {} agree in sign): {verdict}",
            self.mean, self.n, self.agree
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_differences_match_a_hand_computation() {
        // Differences by seed: 0.5, 0.25, 0.75 (seed 9 only in A, seed 8 only in B).
        let a = [(1, 1.0), (2, 2.0), (3, 0.5), (9, 7.0)];
        let b = [(3, 1.25), (8, 0.0), (1, 1.5), (2, 2.25)];
        let p = Paired::of(&a, &b).unwrap();
        // mean 0.5; sample variance ((0)^2 + 0.25^2 + 0.25^2) / 2 = 0.0625; SE √(0.0625 / 3).
        assert_eq!(p.n, 3);
        assert!((p.mean - 0.5).abs() < 1e-15);
        assert!((p.se.unwrap() - (0.0625f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(p.agree, 3);
        // 0.5 / 0.1443 = 3.5 standard errors.
        assert!(p.distinguishable());
        assert!(p.describe(3).ends_with("higher"), "{}", p.describe(3));
    }

    #[test]
    fn a_mean_under_two_standard_errors_is_noise() {
        // Differences 0.3, -0.1, 0.1: mean 0.1, SD 0.2, SE 0.1155 -> 0.87 SE.
        let a = [(1, 0.0), (2, 0.0), (3, 0.0)];
        let b = [(1, 0.3), (2, -0.1), (3, 0.1)];
        let p = Paired::of(&a, &b).unwrap();
        assert_eq!(p.agree, 2);
        assert!(!p.distinguishable());
        assert!(p.describe(2).ends_with("not distinguishable from noise"));
        // One seed has no error bar; no common seed or a NaN gives nothing.
        let one = Paired::of(&a[..1], &b[..1]).unwrap();
        assert_eq!((one.se, one.distinguishable()), (None, false));
        assert_eq!(one.describe(2), "+0.30 (one seed: no error bar)");
        assert_eq!(Paired::of(&a[..1], &b[1..]), None);
        assert_eq!(Paired::of(&[(1, f64::NAN)], &b), None);
    }
}
