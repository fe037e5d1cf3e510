//! Selection by magnitude and scattered writes: what sparse training's masks need
//! (drop the smallest active weights, grow where the gradient is largest).

use super::{DType, Tensor};
use crate::error::{Error, Result};

impl Tensor {
    /// Flat indices of the `k` entries of largest (`largest`) or smallest |value| among
    /// those whose `mask` entry is nonzero (`on`) or zero (`!on`), in increasing index
    /// order; equal magnitudes go to the lower index. Fewer than `k` candidates: all.
    pub fn select_by_magnitude(
        &self,
        mask: &Tensor,
        on: bool,
        k: usize,
        largest: bool,
    ) -> Result<Vec<usize>> {
        self.same_shape("select_by_magnitude", mask)?;
        let v = self.to_dtype(DType::F32);
        let m = mask.to_dtype(DType::F32);
        let (v, m) = (v.as_f32()?, m.as_f32()?);
        let mut cand: Vec<(f32, usize)> = v
            .iter()
            .zip(m)
            .enumerate()
            .filter(|(_, (_, m))| (**m != 0.0) == on)
            .map(|(i, (x, _))| (x.abs(), i))
            .collect();
        let k = k.min(cand.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        // A total order: magnitude (NaN as the largest), then the index.
        let key = |a: &(f32, usize), b: &(f32, usize)| {
            let by = a.0.total_cmp(&b.0);
            let by = if largest { by.reverse() } else { by };
            by.then(a.1.cmp(&b.1))
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, key);
            cand.truncate(k);
        }
        let mut idx: Vec<usize> = cand.into_iter().map(|(_, i)| i).collect();
        idx.sort_unstable();
        Ok(idx)
    }

    /// Flat indices whose entry is nonzero (`on`) or zero (`!on`), in increasing order.
    pub fn positions(&self, on: bool) -> Vec<usize> {
        let v = self.to_vec_f32();
        v.iter()
            .enumerate()
            .filter(|(_, x)| (**x != 0.0) == on)
            .map(|(i, _)| i)
            .collect()
    }

    /// `self[i] = value` for every flat index `i` in `idx`.
    pub fn fill_at(&mut self, idx: &[usize], value: f64) -> Result<()> {
        let len = self.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= len) {
            return Err(Error::shape(
                "fill_at",
                format!("index {bad} out of range for {:?}", self.shape()),
            ));
        }
        if self.dtype() == DType::F32 {
            let s = self.as_f32_mut()?;
            for &i in idx {
                s[i] = value as f32;
            }
        } else {
            for &i in idx {
                self.set(i, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_magnitude_within_the_mask() {
        let v = Tensor::from_vec(&[6], vec![0.5, -3.0, 0.1, 2.0, -0.2, 1.0]).unwrap();
        let m = Tensor::from_vec(&[6], vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0]).unwrap();
        // Active entries 0, 1, 3, 4 with |v| 0.5, 3, 2, 0.2.
        assert_eq!(
            v.select_by_magnitude(&m, true, 2, false).unwrap(),
            vec![0, 4]
        );
        assert_eq!(v.select_by_magnitude(&m, true, 1, true).unwrap(), vec![1]);
        // Inactive entries 2, 5 with |v| 0.1, 1.
        assert_eq!(v.select_by_magnitude(&m, false, 1, true).unwrap(), vec![5]);
        assert_eq!(
            v.select_by_magnitude(&m, false, 9, true).unwrap(),
            vec![2, 5]
        );
        assert!(v.select_by_magnitude(&m, true, 0, true).unwrap().is_empty());
        // Ties go to the lower index.
        let z = Tensor::zeros(&[4], DType::F32);
        let ones = Tensor::full(&[4], 1.0, DType::F32);
        assert_eq!(
            z.select_by_magnitude(&ones, true, 2, true).unwrap(),
            vec![0, 1]
        );
        assert!(
            v.select_by_magnitude(&z.reshape(&[4]).unwrap(), true, 1, true)
                .is_err()
        );
    }

    #[test]
    fn fills_and_finds_positions() {
        let mut t = Tensor::zeros(&[5], DType::F32);
        t.fill_at(&[1, 3], 1.0).unwrap();
        assert_eq!(t.positions(true), vec![1, 3]);
        assert_eq!(t.positions(false), vec![0, 2, 4]);
        assert!(t.fill_at(&[5], 1.0).is_err());
        let mut d = Tensor::zeros(&[3], DType::F64);
        d.fill_at(&[2], 4.0).unwrap();
        assert_eq!(d.to_vec_f64(), vec![0.0, 0.0, 4.0]);
    }
}
