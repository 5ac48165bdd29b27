use super::*;

fn passage(id: i64, text: &str) -> SearchHit {
    SearchHit {
        score: 0.8,
        rerank_score: None,
        text: text.into(),
        chunk_id: id,
        document_id: format!("doc{id}"),
        document_title: format!("Doc {id}"),
        filename: "f.txt".into(),
        page: Some(id),
        heading_path: String::new(),
        char_start: 0,
        char_end: 0,
    }
}

fn passages() -> Vec<SearchHit> {
    vec![
        passage(
            1,
            "Refunds are paid within 14 days of the request, to the card used for the purchase. \
             To ask for a refund, write to the support team from the email address of your \
             account. Gift cards are not refundable.",
        ),
        passage(
            2,
            "Members can book one coaching call per month with Anna. Keep the bedroom cool, \
             around 18 degrees, and dark for better sleep.",
        ),
    ]
}

/// Checks `answer` sentence by sentence; returns what was shown and the checker.
fn run(strictness: Strictness, question: &str, answer: &str) -> (String, Checker) {
    let passages = passages();
    let mut checker = Checker::new(strictness, question, &passages, None);
    let mut shown = Vec::new();
    for range in answer_sentences(answer) {
        if let Outcome::Show { text, .. } = checker.check(answer[range].trim(), None) {
            shown.push(text);
        }
    }
    (shown.join(" "), checker)
}

fn verdicts(checker: &Checker) -> Vec<Verdict> {
    checker.checks.iter().map(|c| c.verdict).collect()
}

#[test]
fn a_wrong_condition_is_replaced_by_the_passage_s_own_sentence() {
    let (shown, checker) = run(
        Strictness::Strict,
        "How long does a refund take?",
        "Refunds are made within 14 days of the date of purchase, and can be made with any \
         credit card that supports online transactions [1].",
    );
    assert_eq!(
        shown,
        "“Refunds are paid within 14 days of the request, to the card used for the purchase.” [1]"
    );
    let check = &checker.checks[0];
    assert_eq!(check.verdict, Verdict::Repaired);
    // The check says what was found where: the 14 days were, "any" was not.
    let fact = |text: &str| check.facts.iter().find(|f| f.text == text).unwrap();
    assert!(fact("14 days").found);
    assert!(
        fact("14 days")
            .evidence
            .as_ref()
            .unwrap()
            .contains("14 days")
    );
    assert!(!fact("any").found);
    assert!(check.reason.as_ref().unwrap().contains("any"));
}

#[test]
fn an_invented_detail_is_dropped_and_a_right_one_kept() {
    let (shown, checker) = run(
        Strictness::Strict,
        "Can I book two coaching calls in one week?",
        "No, members can book one coaching call per month [1]. Each coach is only available \
         for one day a week [1].",
    );
    assert_eq!(
        shown,
        "No, members can book one coaching call per month [1]."
    );
    assert_eq!(verdicts(&checker), [Verdict::Supported, Verdict::Dropped]);
}

#[test]
fn a_claim_about_what_no_passage_mentions_is_dropped() {
    let question = "Can I get a refund for a gift voucher?";
    let (shown, checker) = run(
        Strictness::Strict,
        question,
        "Yes, you can definitely get a refund for a gift voucher [1]. UK rules say so.",
    );
    assert_eq!(shown, "");
    assert_eq!(verdicts(&checker), [Verdict::Dropped, Verdict::Dropped]);
    assert!(checker.checks[0].reason.as_ref().unwrap().contains("vouch"));
}

#[test]
fn a_dropped_not_is_caught() {
    let (shown, checker) = run(
        Strictness::Strict,
        "Are gift cards refundable?",
        "Gift cards are refundable [1].",
    );
    assert_eq!(shown, "“Gift cards are not refundable.” [1]");
    assert_eq!(verdicts(&checker), [Verdict::Repaired]);
}

#[test]
fn names_must_be_in_the_passage() {
    let (shown, checker) = run(
        Strictness::Strict,
        "Who runs the coaching calls?",
        "Members book one coaching call per month with Anna [2]. Our calls are run by Maria \
         [2].",
    );
    assert_eq!(
        shown,
        "Members book one coaching call per month with Anna [1]."
    );
    assert_eq!(verdicts(&checker), [Verdict::Supported, Verdict::Dropped]);
}

#[test]
fn conversation_needs_no_source_and_repeats_are_left_out() {
    let (shown, checker) = run(
        Strictness::Strict,
        "How long does a refund take?",
        "Sure! Refunds are paid within 14 days of the request [1]. Refunds are paid within \
         14 days of the request [1]. Let me know if you have any other questions. Would you \
         like to know more?",
    );
    assert_eq!(
        shown,
        "Sure! Refunds are paid within 14 days of the request [1]. Let me know if you have \
         any other questions. Would you like to know more?"
    );
    assert_eq!(
        verdicts(&checker),
        [
            Verdict::Conversational,
            Verdict::Supported,
            Verdict::Dropped,
            Verdict::Conversational,
            Verdict::Conversational
        ]
    );
}

#[test]
fn refusals_are_left_to_the_fallback_except_for_open_coaches() {
    let answer = "I don't know the answer to that.";
    let (shown, _) = run(Strictness::Strict, "Can I pay in bitcoin?", answer);
    assert_eq!(shown, "");
    let (shown, _) = run(Strictness::Open, "Can I pay in bitcoin?", answer);
    assert_eq!(shown, answer);
}

#[test]
fn balanced_keeps_advice_without_a_source_but_not_a_wrong_number() {
    let question = "How should I sleep better?";
    let answer = "Keep the bedroom cool, around 25 degrees [2]. Try reading a calm book before \
                  sleeping.";
    let (shown, checker) = run(Strictness::Balanced, question, answer);
    assert_eq!(
        shown,
        "“Keep the bedroom cool, around 18 degrees, and dark for better sleep.” [1] Try \
         reading a calm book before sleeping."
    );
    assert_eq!(
        verdicts(&checker),
        [Verdict::Repaired, Verdict::Unsupported]
    );
    let (shown, _) = run(Strictness::Strict, question, answer);
    assert_eq!(
        shown,
        "“Keep the bedroom cool, around 18 degrees, and dark for better sleep.” [1]"
    );
}

#[test]
fn open_only_fixes_markers() {
    let answer = "Refunds are paid within 14 days [2]. Keep your bedroom cool and dark. The moon \
                  is made of cheese [1]. Sure!";
    let (shown, checker) = run(Strictness::Open, "Tell me things", answer);
    assert_eq!(
        shown,
        "Refunds are paid within 14 days [1]. Keep your bedroom cool and dark [2]. The moon \
         is made of cheese. Sure!"
    );
    let citations = checker.citations(&passages());
    assert_eq!(citations.len(), 2);
    assert_eq!(citations[0].document_id, "doc1");
    assert_eq!(citations[1].document_id, "doc2");
    assert!(citations[1].snippet.contains("18 degrees"));
    // Three claims, two supported; both model markers were wrong.
    assert!((checker.support() - 2.0 / 3.0).abs() < 1e-6);
    assert_eq!(checker.model_markers_correct(), Some(0.0));
}

#[test]
fn code_is_shown_as_written() {
    let passages = passages();
    let mut checker = Checker::new(Strictness::Open, "q", &passages, None);
    for line in ["```python", "refund(days=14) [1]", "```"] {
        assert_eq!(
            checker.check(line, None),
            Outcome::Show {
                text: line.into(),
                claim: false
            }
        );
    }
    assert!(checker.citations(&passages).is_empty());
    // To a strict coach code states facts too: an invented value in it is not shown.
    let mut checker = Checker::new(Strictness::Strict, "q", &passages, None);
    assert!(matches!(checker.check("```", None), Outcome::Show { .. }));
    let line = "refund(days=90, fee=\"€500\")";
    let outcome = checker.check(line, None);
    assert!(
        !matches!(&outcome, Outcome::Show { text, .. } if text.contains("€500")),
        "{outcome:?}"
    );
}

#[test]
fn an_answer_must_answer_the_question_or_quote_what_does() {
    let passages = passages();
    let question = "Which card do refunds go to?";
    let mut checker = Checker::new(Strictness::Strict, question, &passages, None);
    // Supported, but about something else: it does not answer.
    let shown = checker.check("Members can book one coaching call per month [2].", None);
    assert!(matches!(shown, Outcome::Show { claim: true, .. }));
    assert!(!checker.answers_question());
    assert_eq!(
        checker.quote_answer().unwrap(),
        "“Refunds are paid within 14 days of the request, to the card used for the purchase.” [2]"
    );
    assert!(checker.answers_question());
    assert_eq!(checker.checks.last().unwrap().verdict, Verdict::Quoted);

    // A question about what no passage mentions needs more than a shared word or two.
    let mut checker = Checker::new(
        Strictness::Strict,
        "Can I pay for the refund in bitcoin?",
        &passages,
        None,
    );
    checker.check("Refunds are paid within 14 days of the request [1].", None);
    assert!(!checker.answers_question());
    assert!(checker.quote_candidates().is_empty());
}

#[test]
fn a_claim_that_leaves_out_the_passage_s_not_is_quoted_instead() {
    let passages = vec![passage(
        1,
        "You can cancel a Monthly membership at any time from the account page. We do not \
         accept cancellations by email or in the chat, because we need to confirm that the \
         request comes from the account holder.",
    )];
    let mut checker = Checker::new(
        Strictness::Strict,
        "How do I cancel my membership?",
        &passages,
        None,
    );
    let shown = checker.check(
        "You can also cancel a membership by email or chat with them via phone [1].",
        None,
    );
    // Replaced by the passage's own words: the sentence about what was asked.
    assert_eq!(
        shown,
        Outcome::Show {
            text: "“You can cancel a Monthly membership at any time from the account page.” [1]"
                .into(),
            claim: true
        }
    );
    let check = &checker.checks[0];
    assert_eq!(check.verdict, Verdict::Repaired);
    assert!(check.reason.as_ref().unwrap().contains("not"), "{check:?}");
}

#[test]
fn spanish_answers_are_checked_the_same_way() {
    let passages = vec![passage(
        1,
        "Los reembolsos se pagan en un plazo de 14 días desde la solicitud, a la tarjeta usada \
         en la compra. Las tarjetas regalo no son reembolsables.",
    )];
    let question = "¿Cuánto tarda un reembolso?";
    let mut checker = Checker::new(Strictness::Strict, question, &passages, None);
    // Right: shown as written.
    let right = "Los reembolsos se pagan en 14 días desde la solicitud [1].";
    assert_eq!(
        checker.check(right, None),
        Outcome::Show {
            text: "Los reembolsos se pagan en 14 días desde la solicitud [1].".into(),
            claim: true
        }
    );
    assert!(checker.answers_question());
    // A wrong duration is replaced by the passage's sentence; a greeting needs no source.
    let wrong = checker.check("Los reembolsos se pagan en tres semanas [1].", None);
    assert_eq!(
        checker.checks.last().unwrap().verdict,
        Verdict::Repaired,
        "{wrong:?}"
    );
    let greeting = checker.check("¡Espero que te ayude!", None);
    assert!(matches!(greeting, Outcome::Show { claim: false, .. }));
    // "I don't know" is left to the fallback.
    assert_eq!(checker.check("No lo sé.", None), Outcome::Hide);
    // A dropped "no" is caught.
    let mut checker = Checker::new(
        Strictness::Strict,
        "¿Son reembolsables las tarjetas regalo?",
        &passages,
        None,
    );
    checker.check("Las tarjetas regalo son reembolsables [1].", None);
    assert_eq!(checker.checks[0].verdict, Verdict::Repaired);
    assert_eq!(
        checker.checks[0].delivered.as_deref(),
        Some("“Las tarjetas regalo no son reembolsables.” [1]")
    );
}

#[test]
fn evidence_is_cut_safely_around_characters_that_change_length_in_lower_case() {
    let passages = vec![passage(
        1,
        "Our studio in İstanbul opens early for members who want to train before work, and the \
         coaches there speak English and Turkish. The monthly membership in that studio costs \
         €29 and includes two coaching calls.",
    )];
    let mut checker = Checker::new(Strictness::Strict, "What does it cost?", &passages, None);
    let shown = checker.check("The monthly membership in İstanbul costs €29 [1].", None);
    assert!(
        matches!(shown, Outcome::Show { claim: true, .. }),
        "{shown:?}"
    );
    let fact = checker.checks[0]
        .facts
        .iter()
        .find(|f| f.text == "€29")
        .unwrap();
    assert!(fact.found && fact.evidence.as_ref().unwrap().contains("€29"));
}

#[test]
fn set_phrases_carry_no_claim_past_the_check() {
    let passages = passages();
    let question = "Are gift cards refundable?";
    for claim in [
        "Yes, they are fully refundable!",
        "Certainly, gift cards are refundable.",
        "Feel free to request a gift card refund by phone or in the chat.",
        "Did you know gift cards can also be exchanged for cash?",
    ] {
        let mut checker = Checker::new(Strictness::Strict, question, &passages, None);
        checker.check(claim, None);
        assert_ne!(
            checker.checks[0].verdict,
            Verdict::Conversational,
            "{claim}"
        );
    }
    // A "Yes!" is only as true as the claim after it.
    let (shown, checker) = run(
        Strictness::Strict,
        question,
        "Yes! Gift cards are refundable [1].",
    );
    assert_eq!(shown, "“Gift cards are not refundable.” [1]");
    assert_eq!(verdicts(&checker), [Verdict::Dropped, Verdict::Repaired]);
    // A refusal is said of the coach's knowledge or the sources; advice is a claim.
    let (shown, _) = run(
        Strictness::Strict,
        "Where do I write for a refund?",
        "If you are not sure, write to the support team from the email address of your \
         account [1].",
    );
    assert!(shown.contains("support team"), "{shown}");
}

#[test]
fn a_sentence_cites_the_passage_that_supports_it_best_not_the_near_miss_the_model_chose() {
    let passages = vec![
        passage(
            1,
            "Refunds are paid within 14 days of the request, to the card used for the purchase.",
        ),
        passage(
            2,
            "Refunds for the Annual plan are paid once the purchase is cancelled.",
        ),
    ];
    let check = |answer: &str| {
        let mut checker = Checker::new(Strictness::Strict, "Where do refunds go?", &passages, None);
        let Outcome::Show { text, .. } = checker.check(answer, None) else {
            panic!("{answer} was not shown");
        };
        (text, checker.citations(&passages))
    };
    // Passage 2 shares three of its five words: it supports the sentence, but passage 1 says
    // all of it.
    let (shown, citations) = check("Refunds are paid to the card used for the purchase [2].");
    assert_eq!(
        shown,
        "Refunds are paid to the card used for the purchase [1]."
    );
    assert_eq!(citations.len(), 1);
    assert_eq!(citations[0].chunk_id, 1);
    // Where the model's passage supports it as well as any, its choice stands.
    let (_, citations) = check("Refunds are paid once the purchase is cancelled [2].");
    assert_eq!(citations[0].chunk_id, 2);
}
