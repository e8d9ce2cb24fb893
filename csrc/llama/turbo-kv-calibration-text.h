// pyturbo: the text a calibration pass runs through a model (turbo-kv-calibration.cpp).
// Written for pyturbo: a mix of prose, dialogue, lists, numbers, code and markup, so that
// keys and queries see the kinds of input a local model is given. English only; about
// 1,100 tokens with a 150k-token BPE vocabulary.
#pragma once

static const char PYTURBO_CALIBRATION_TEXT[] = R"PYTURBO(
The ferry left the harbour a little after seven, when the fog had thinned enough for the pilot to see the second buoy. Most passengers stayed inside, where the windows were fogged and someone had left a crossword half finished on the bench. Outside, an old man in a yellow coat leaned on the rail and counted the gulls that followed the wake. He had made this crossing every Thursday for thirty-one years, first to sell cheese at the market on the island and later, after he retired, simply because he liked the hour on the water more than anything the island offered.

"You again," said the deckhand, coiling a rope by his feet.
"Me again. Any news?"
"The café on the pier closed. They say the rent doubled."
"Then I will bring my own coffee next week," the old man said, and went back to counting.

How to make a simple loaf of bread:
1. Mix 500 g of flour, 10 g of salt and 7 g of dried yeast in a large bowl.
2. Add 320 ml of warm water and stir until no dry flour is left.
3. Knead for ten minutes, until the dough is smooth and springs back when pressed.
4. Cover and leave it somewhere warm for about an hour, until it has doubled in size.
5. Shape it, let it rise again for 40 minutes, then bake at 220 °C for 30 to 35 minutes.
The loaf is done when it sounds hollow as you tap the bottom.

In 1854 a physician in London mapped the cases of cholera around Broad Street and noticed that they clustered near one public water pump. His argument, that the disease spread through contaminated water rather than through bad air, was not widely accepted at the time. The handle of the pump was removed anyway, and the outbreak, which was already declining, ended soon after. Historians still debate how much the removal itself mattered, but the map became one of the founding documents of epidemiology.

def moving_average(values, window):
    """Return the mean of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    total = sum(values[:window])
    averages = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages

print(moving_average([3, 5, 7, 9, 11, 13], 3))  # [5.0, 7.0, 9.0, 11.0]

{"id": 4821, "name": "Ada", "roles": ["admin", "editor"], "active": true, "last_login": "2024-03-17T09:42:00Z", "quota_mb": 2048}

SELECT customer_id, COUNT(*) AS orders, SUM(total) AS spent
FROM orders
WHERE created_at >= '2024-01-01'
GROUP BY customer_id
HAVING COUNT(*) > 3
ORDER BY spent DESC
LIMIT 10;

Q: Why does ice float on water?
A: Because water expands when it freezes. The molecules lock into a hexagonal lattice that holds them farther apart than in the liquid, so ice is about nine percent less dense than the water around it.

Q: What is the capital of Australia?
A: Canberra. Many people guess Sydney or Melbourne; Canberra was chosen as a compromise between the two and built as a planned city.

The committee met on Tuesday to review the budget for the coming year. Spending on roads rose by 4.2 percent, mostly to repair the bridge on the northern bypass, while the library's allocation stayed flat for the third year running. Two members asked for a study of whether the bus routes could be merged; the chair agreed to report back in March. The meeting closed at 9:15 pm.

<ul>
  <li><a href="/docs/install">Installation</a></li>
  <li><a href="/docs/usage">Usage</a> &mdash; the command line and the Python API</li>
  <li><a href="/docs/faq">Frequently asked questions</a></li>
</ul>

#include <stdio.h>

int main(void) {
    int counts[26] = {0};
    int c;
    while ((c = getchar()) != EOF) {
        if (c >= 'a' && c <= 'z') {
            counts[c - 'a']++;
        }
    }
    for (int i = 0; i < 26; i++) {
        printf("%c %d\n", 'a' + i, counts[i]);
    }
    return 0;
}

Dear Ms. Okafor,
Thank you for your letter of 12 May. I am sorry that the replacement part arrived damaged. We have sent a new one by courier; it should reach you by Friday, and you do not need to return the broken piece. If anything else goes wrong, please reply to this message and I will deal with it myself.
Kind regards,
Tomás Reyes, Customer Service

The night was clear and very cold. From the ridge they could see the lights of three villages strung along the valley floor, and beyond them the dark line of the forest. Nobody spoke. Mira checked the map again by the light of her phone, although she knew the route by heart: down the scree, left at the shepherd's hut, then along the stream until the path met the road. It would take two hours if the snow held off, and the forecast said it would not.

Temperature readings (°C): Monday 14.5, Tuesday 16.1, Wednesday 11.8, Thursday 9.9, Friday 12.3, Saturday 17.0, Sunday 18.4. The weekly mean was 14.29 and the spread between the coldest and warmest day was 8.5 degrees.

git checkout -b fix-timeout
git commit -am "Raise the request timeout to 30 s and retry once on a reset connection"
git push origin fix-timeout
)PYTURBO";
